//! Acknowledgement templates: `<name>.<language>.txt` files rendered with
//! minijinja. Templates are compiled when the configuration loads, so a
//! syntax error is a config error, never a failed acknowledgement.
//!
//! Language falls back from the exact tag (`de-CH`) to its primary subtag
//! (`de`) to the configured default language.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The template every acknowledgement uses unless a rule picks another.
pub const DEFAULT_ACK: &str = "ack";

/// What a template can use.
#[derive(Debug, Clone, Serialize)]
pub struct AckContext<'a> {
    pub reference: &'a str,
    pub customer_name: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub channel: &'a str,
    pub language: &'a str,
}

/// A template problem found at load time.
#[derive(Debug, Clone)]
pub struct TemplateLoadError {
    /// The template file at fault, when one is.
    pub file: Option<PathBuf>,
    /// True when the problem is inside a template rather than the setting.
    pub in_template: bool,
    pub message: String,
}

/// A render failed at dispatch time (a variable used wrongly, say).
#[derive(Debug, thiserror::Error)]
#[error("template `{name}` ({language}) failed to render: {message}")]
pub struct RenderError {
    pub name: String,
    pub language: String,
    pub message: String,
}

/// The compiled templates of one configuration. Cloned by adapters that
/// render their own texts (the Twilio voice greeting).
#[derive(Debug, Clone)]
pub struct AckTemplates {
    env: minijinja::Environment<'static>,
    /// `(name, language)` pairs present.
    available: BTreeSet<(String, String)>,
    default_language: String,
}

impl AckTemplates {
    /// Loads every `<name>.<language>.txt` in `dir`. The default `ack`
    /// template must exist in `default_language`.
    pub fn load(dir: &Path, default_language: &str) -> Result<AckTemplates, TemplateLoadError> {
        let setting_error = |message: String| TemplateLoadError {
            file: None,
            in_template: false,
            message,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| setting_error(format!("cannot read folder {}: {e}", dir.display())))?;
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let mut available = BTreeSet::new();
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let Some(file_name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = file_name.strip_suffix(".txt") else {
                continue;
            };
            let in_file = |message: String| TemplateLoadError {
                file: Some(file.clone()),
                in_template: true,
                message,
            };
            let Some((name, language)) = stem.split_once('.') else {
                return Err(in_file(
                    "template files are named `<name>.<language>.txt`".into(),
                ));
            };
            let source =
                std::fs::read_to_string(&file).map_err(|e| in_file(format!("cannot read: {e}")))?;
            env.add_template_owned(stem.to_owned(), source)
                .map_err(|e| in_file(format!("template syntax: {e}")))?;
            available.insert((name.to_owned(), language.to_ascii_lowercase()));
        }
        let templates = AckTemplates {
            env,
            available,
            default_language: default_language.to_ascii_lowercase(),
        };
        if !templates.has(DEFAULT_ACK) {
            return Err(setting_error(format!(
                "{} has no `{DEFAULT_ACK}.{default_language}.txt`",
                dir.display()
            )));
        }
        Ok(templates)
    }

    /// Whether a template `name` exists in the default language (every
    /// template must, so any customer can be answered).
    pub fn has(&self, name: &str) -> bool {
        self.available
            .contains(&(name.to_owned(), self.default_language.clone()))
    }

    /// The names of the templates present in the default language (the
    /// ones a rule may choose).
    pub fn names(&self) -> BTreeSet<String> {
        self.available
            .iter()
            .filter(|(_, language)| *language == self.default_language)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The language a customer writing in `language` will be answered in.
    pub fn resolve_language(&self, name: &str, language: Option<&str>) -> String {
        let wanted = language.map(str::to_ascii_lowercase);
        let candidates = wanted
            .iter()
            .flat_map(|l| [l.clone(), l.split('-').next().unwrap_or(l).to_owned()]);
        for lang in candidates {
            if self.available.contains(&(name.to_owned(), lang.clone())) {
                return lang;
            }
        }
        self.default_language.clone()
    }

    /// Renders template `name` for `ctx.language` (already resolved).
    pub fn render(&self, name: &str, ctx: &AckContext<'_>) -> Result<String, RenderError> {
        let err = |message: String| RenderError {
            name: name.to_owned(),
            language: ctx.language.to_owned(),
            message,
        };
        let key = format!("{name}.{}", ctx.language);
        let template = self
            .env
            .get_template(&key)
            .or_else(|_| {
                self.env
                    .get_template(&format!("{name}.{}", self.default_language))
            })
            .map_err(|e| err(e.to_string()))?;
        let text = template.render(ctx).map_err(|e| err(e.to_string()))?;
        Ok(text.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<AckTemplates, TemplateLoadError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        AckTemplates::load(dir.path(), "en")
    }

    fn ctx(language: &str) -> AckContext<'static> {
        AckContext {
            reference: "INQ-7K3F9Q",
            customer_name: Some("Ada"),
            subject: None,
            channel: "generic/shop",
            language: Box::leak(language.to_owned().into_boxed_str()),
        }
    }

    #[test]
    fn renders_with_language_fallback() {
        let t = load(&[
            (
                "ack.en.txt",
                "Hello {{ customer_name or 'there' }}, ref {{ reference }}\n",
            ),
            (
                "ack.de.txt",
                "Hallo {{ customer_name }}, Nr. {{ reference }}",
            ),
        ])
        .unwrap();
        assert_eq!(t.resolve_language("ack", Some("de-CH")), "de");
        assert_eq!(t.resolve_language("ack", Some("fr")), "en");
        assert_eq!(t.resolve_language("ack", None), "en");
        assert_eq!(
            t.render("ack", &ctx("de")).unwrap(),
            "Hallo Ada, Nr. INQ-7K3F9Q"
        );
        assert_eq!(
            t.render("ack", &ctx("en")).unwrap(),
            "Hello Ada, ref INQ-7K3F9Q"
        );
    }

    #[test]
    fn load_errors_are_clear() {
        let e = load(&[("ack.de.txt", "x")]).unwrap_err();
        assert!(e.message.contains("ack.en.txt"), "{}", e.message);
        let e = load(&[("ack.en.txt", "{% if %}")]).unwrap_err();
        assert!(
            e.in_template && e.message.contains("syntax"),
            "{}",
            e.message
        );
        let e = load(&[("ack.en.txt", "x"), ("oops.txt", "y")]).unwrap_err();
        assert!(e.message.contains("<name>.<language>.txt"));
    }

    #[test]
    fn unknown_variables_fail_to_render_instead_of_printing_blanks() {
        let t = load(&[("ack.en.txt", "ref {{ refrence }}")]).unwrap();
        assert!(t.render("ack", &ctx("en")).is_err());
    }
}
