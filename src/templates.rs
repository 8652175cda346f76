//! Acknowledgement templates: `<name>.<language>.txt` files rendered with
//! minijinja, and optional HTML variants `<name>.<language>.html` (rendered
//! with HTML auto-escaping, same variables) that email acknowledgements
//! carry as the `text/html` alternative. Templates are compiled when the
//! configuration loads, so a syntax error is a config error, never a failed
//! acknowledgement.
//!
//! Language falls back from the exact tag (`de-CH`) to its primary subtag
//! (`de`) to the configured default language. The HTML variant follows the
//! text: it is used only in the language the text was rendered in.

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
    /// `(name, language)` pairs present as text.
    available: BTreeSet<(String, String)>,
    /// `(name, language)` pairs that also have an HTML variant.
    html: BTreeSet<(String, String)>,
    default_language: String,
}

/// How the environment registers a template: text under `<name>.<lang>`,
/// HTML under `<name>.<lang>.html` (which turns auto-escaping on).
fn html_key(name: &str, language: &str) -> String {
    format!("{name}.{language}.html")
}

/// HTML-escape what `.html` templates print; text templates print as is.
fn auto_escape(key: &str) -> minijinja::AutoEscape {
    if key.ends_with(".html") {
        minijinja::AutoEscape::Html
    } else {
        minijinja::AutoEscape::None
    }
}

impl AckTemplates {
    /// Loads every `<name>.<language>.txt` and `<name>.<language>.html` in
    /// `dir`. The default `ack` template must exist in `default_language`;
    /// an HTML variant needs its text variant (the plain alternative, and
    /// what other channels send).
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
        env.set_auto_escape_callback(auto_escape);
        let mut available = BTreeSet::new();
        let mut html = BTreeSet::new();
        let mut html_files = Vec::new();
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let Some(file_name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (stem, is_html) = match (
                file_name.strip_suffix(".txt"),
                file_name.strip_suffix(".html"),
            ) {
                (Some(stem), _) => (stem, false),
                (None, Some(stem)) => (stem, true),
                (None, None) => continue,
            };
            let in_file = |message: String| TemplateLoadError {
                file: Some(file.clone()),
                in_template: true,
                message,
            };
            let Some((name, language)) = stem.split_once('.') else {
                return Err(in_file(if is_html {
                    "HTML template files are named `<name>.<language>.html`".into()
                } else {
                    "template files are named `<name>.<language>.txt`".into()
                }));
            };
            let source =
                std::fs::read_to_string(&file).map_err(|e| in_file(format!("cannot read: {e}")))?;
            let language = language.to_ascii_lowercase();
            // Keys are lower case so lookups by resolved language find them.
            let key = if is_html {
                html_key(name, &language)
            } else {
                format!("{name}.{language}")
            };
            env.add_template_owned(key, source)
                .map_err(|e| in_file(format!("template syntax: {e}")))?;
            if is_html {
                html_files.push((file.clone(), name.to_owned(), language.clone()));
                html.insert((name.to_owned(), language));
            } else {
                available.insert((name.to_owned(), language));
            }
        }
        for (file, name, language) in html_files {
            if !available.contains(&(name.clone(), language.clone())) {
                return Err(TemplateLoadError {
                    file: Some(file),
                    in_template: true,
                    message: format!(
                        "an HTML template needs its text variant `{name}.{language}.txt` beside it"
                    ),
                });
            }
        }
        let templates = AckTemplates {
            env,
            available,
            html,
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

    /// The language template `name` is rendered in for `language`
    /// (already resolved): that one if the template has it, else the
    /// default language.
    fn rendered_language(&self, name: &str, language: &str) -> String {
        let language = language.to_ascii_lowercase();
        if self
            .available
            .contains(&(name.to_owned(), language.clone()))
        {
            language
        } else {
            self.default_language.clone()
        }
    }

    /// Renders template `name` for `ctx.language` (already resolved).
    pub fn render(&self, name: &str, ctx: &AckContext<'_>) -> Result<String, RenderError> {
        let err = |message: String| RenderError {
            name: name.to_owned(),
            language: ctx.language.to_owned(),
            message,
        };
        let language = self.rendered_language(name, ctx.language);
        let template = self
            .env
            .get_template(&format!("{name}.{language}"))
            .map_err(|e| err(e.to_string()))?;
        let text = template.render(ctx).map_err(|e| err(e.to_string()))?;
        Ok(text.trim().to_owned())
    }

    /// Whether template `name` has an HTML variant in the language
    /// [`AckTemplates::render`] would use for `language`.
    pub fn has_html(&self, name: &str, language: &str) -> bool {
        let language = self.rendered_language(name, language);
        self.html.contains(&(name.to_owned(), language))
    }

    /// Renders the HTML variant of template `name` in the language the
    /// text is rendered in, with every printed value HTML-escaped; `None`
    /// when there is no HTML variant for that language.
    pub fn render_html(
        &self,
        name: &str,
        ctx: &AckContext<'_>,
    ) -> Result<Option<String>, RenderError> {
        if !self.has_html(name, ctx.language) {
            return Ok(None);
        }
        let err = |message: String| RenderError {
            name: format!("{name} (HTML)"),
            language: ctx.language.to_owned(),
            message,
        };
        let language = self.rendered_language(name, ctx.language);
        let template = self
            .env
            .get_template(&html_key(name, &language))
            .map_err(|e| err(e.to_string()))?;
        let html = template.render(ctx).map_err(|e| err(e.to_string()))?;
        Ok(Some(html.trim().to_owned()))
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

    fn ctx_named(language: &'static str, name: &'static str) -> AckContext<'static> {
        AckContext {
            customer_name: Some(name),
            subject: Some("Fees & <charges>"),
            ..ctx(language)
        }
    }

    #[test]
    fn html_variants_render_escaped_and_follow_the_text_language() {
        let t = load(&[
            (
                "ack.en.txt",
                "Hello {{ customer_name }}, ref {{ reference }}",
            ),
            (
                "ack.en.html",
                "<p>Hello <b>{{ customer_name }}</b>, ref {{ reference }} ({{ subject }})</p>\n",
            ),
            ("ack.de.txt", "Hallo {{ customer_name }}"),
        ])
        .unwrap();
        let evil = ctx_named("en", "<script>alert('x')</script>");
        let html = t.render_html("ack", &evil).unwrap().unwrap();
        assert_eq!(
            html,
            "<p>Hello <b>&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt;</b>, ref INQ-7K3F9Q \
             (Fees &amp; &lt;charges&gt;)</p>"
        );
        assert!(!html.contains("<script>"));
        // The text variant is text: nothing is escaped there.
        assert_eq!(
            t.render("ack", &evil).unwrap(),
            "Hello <script>alert('x')</script>, ref INQ-7K3F9Q"
        );
        // German text has no HTML variant: plain text only, never English HTML.
        assert!(!t.has_html("ack", "de"));
        assert_eq!(t.render_html("ack", &ctx_named("de", "Ada")).unwrap(), None);
        // French falls back to English, text and HTML alike.
        assert!(t.has_html("ack", "fr"));
        assert!(
            t.render_html("ack", &ctx_named("fr", "Ada"))
                .unwrap()
                .unwrap()
                .contains("<b>Ada</b>")
        );
        // Another template without any HTML variant.
        assert!(!t.has_html("other", "en"));
    }

    #[test]
    fn html_templates_are_validated_at_load() {
        let e = load(&[("ack.en.txt", "x"), ("ack.en.html", "<p>{% if %}</p>")]).unwrap_err();
        assert!(
            e.in_template && e.message.contains("syntax"),
            "{}",
            e.message
        );
        assert!(
            e.file
                .as_deref()
                .is_some_and(|f| f.ends_with("ack.en.html")),
            "{:?}",
            e.file
        );
        let e = load(&[("ack.en.txt", "x"), ("ack.fr.html", "<p>Bonjour</p>")]).unwrap_err();
        assert!(e.message.contains("ack.fr.txt"), "{}", e.message);
        assert!(
            e.file
                .as_deref()
                .is_some_and(|f| f.ends_with("ack.fr.html"))
        );
        let e = load(&[("ack.en.txt", "x"), ("oops.html", "<p>y</p>")]).unwrap_err();
        assert!(
            e.message.contains("<name>.<language>.html"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_variables_in_html_fail_to_render() {
        let t = load(&[
            ("ack.en.txt", "x"),
            ("ack.en.html", "<p>{{ refrence }}</p>"),
        ])
        .unwrap();
        assert!(t.render_html("ack", &ctx("en")).is_err());
    }

    #[test]
    fn shipped_templates_load_and_escape() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
        let t = AckTemplates::load(&dir, "en").unwrap();
        for language in ["en", "de"] {
            assert!(t.has_html("ack", language), "ack.{language}.html");
            let html = t
                .render_html("ack", &ctx_named(language, "<script>x</script>"))
                .unwrap()
                .unwrap();
            assert!(html.contains("INQ-7K3F9Q"), "{html}");
            assert!(html.contains("&lt;script&gt;x"), "{html}");
            assert!(!html.contains("<script>"), "{html}");
            let html = t
                .render_html(
                    "ack",
                    &AckContext {
                        customer_name: None,
                        ..ctx(language)
                    },
                )
                .unwrap()
                .unwrap();
            assert!(html.contains("INQ-7K3F9Q"), "{html}");
        }
    }
}
