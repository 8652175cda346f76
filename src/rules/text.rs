//! Case- and accent-insensitive text for keyword matching.
//!
//! [`normalize`] lower-cases, decomposes (NFD) and drops combining marks, so
//! `Überweisung` and `uberweisung` are the same word, and spells out the
//! letters NFD does not decompose (`ß` → `ss`, `æ` → `ae`, `ø` → `o`, …).
//! Runs of whitespace become one space, so a line break between two words of
//! a phrase does not hide it.
//!
//! [`fold`] goes one step further for matching: it also folds the German
//! digraphs `ae`, `oe`, `ue` to `a`, `o`, `u`, so `Ueberweisung` (typed
//! without umlauts) matches the keyword `Überweisung`, and reads a hyphen
//! as a space, so `Online-Banking` and `online banking` are the same. It is applied to
//! keywords and text alike, so it never hides a match; at worst two words
//! that differ only in such a digraph match each other.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lower case, no accents, `ß` → `ss`, whitespace runs collapsed, trimmed.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        match c {
            'ß' | 'ẞ' => out.push_str("ss"),
            'æ' | 'Æ' => out.push_str("ae"),
            'œ' | 'Œ' => out.push_str("oe"),
            'ø' | 'Ø' => out.push('o'),
            'đ' | 'Đ' | 'ð' | 'Ð' => out.push('d'),
            'ł' | 'Ł' => out.push('l'),
            'þ' | 'Þ' => out.push_str("th"),
            'ı' => out.push('i'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// [`normalize`], then `ae` → `a`, `oe` → `o`, `ue` → `u` and `-` → ` `:
/// the form keywords and texts are compared in.
pub fn fold(text: &str) -> String {
    let normalized = normalize(&text.replace('-', " "));
    let mut out = String::with_capacity(normalized.len());
    let mut chars = normalized.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if matches!(c, 'a' | 'o' | 'u') && chars.peek() == Some(&'e') {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_accents_and_eszett() {
        assert_eq!(
            normalize("Überweisung FEHLGESCHLAGEN"),
            "uberweisung fehlgeschlagen"
        );
        assert_eq!(normalize("Straße"), "strasse");
        assert_eq!(normalize("STRASSE"), "strasse");
        assert_eq!(normalize("Crème brûlée"), "creme brulee");
        assert_eq!(normalize("Ærø Łódź"), "aero lodz");
        // Precomposed and decomposed input are the same.
        assert_eq!(normalize("Ko\u{0308}ln"), normalize("Köln"));
    }

    #[test]
    fn whitespace_is_collapsed() {
        assert_eq!(normalize("  Konto \n\t gesperrt  "), "konto gesperrt");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn digraphs_fold_like_umlauts() {
        assert_eq!(fold("Ueberweisung"), fold("Überweisung"));
        assert_eq!(fold("Schaeden"), fold("Schäden"));
        assert_eq!(fold("Goethe"), fold("Göthe"));
        assert_eq!(fold("queue"), "quu");
        assert_eq!(fold("Online-Banking"), fold("online  banking"));
    }
}
