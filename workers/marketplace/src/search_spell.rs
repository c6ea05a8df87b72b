//! Typo tolerance for `GET /v1/search`: a query word that no listing uses
//! ("aquarim", "heeter", "chinchila") is replaced by the closest word that
//! listings do use, before the query is embedded and matched by full-text
//! search ("aquarium heater").
//!
//! The vocabulary is `search_terms` (migration 0005): every word of every
//! listing's title, description, breed and species, kept up to date by
//! triggers on `listings`, with a trigram index (pg_trgm) that finds the
//! candidates of a word. Which candidate wins is decided here: the smallest
//! edit distance (Damerau, optimal string alignment), within a budget that
//! grows with the word, as search engines' "fuzziness: auto" does:
//!
//! - words of fewer than [`MIN_WORD_CHARS`] characters are never corrected:
//!   "house", "gray", "keep" are real words that the catalog happens not to
//!   use, and a short word is one edit away from too many others;
//! - 6–7 characters: one edit; 8 or more: two.
//!
//! The full-text half searches the words as typed *and* as corrected, so a
//! correction can only add matches; the semantic half embeds the corrected
//! query. See docs/search.md.
//!
//! No dependencies (xtask includes this file too); the query that fetches the
//! candidates runs in `search::correct`.

use std::collections::HashMap;

pub const MIN_WORD_CHARS: usize = 6;

/// Words of the query (as PostgreSQL's `simple` parser splits and lowercases
/// them) that are long enough to correct and unknown to the vocabulary, each
/// with its closest known words by trigram similarity.
pub const CANDIDATES_SQL: &str = "
    SELECT w, ARRAY(SELECT t.term FROM search_terms t WHERE t.term % w
                    ORDER BY similarity(t.term, w) DESC, t.term LIMIT 20)
    FROM (SELECT DISTINCT w FROM unnest(tsvector_to_array(to_tsvector('simple', $1))) w
          WHERE char_length(w) >= 6 AND w ~ '^[[:alpha:]]+$') words
    WHERE NOT EXISTS (SELECT 1 FROM search_terms t WHERE t.term = w)";

/// How many edits a word of this length may be away from its correction.
pub fn max_edits(word: &str) -> usize {
    match word.chars().count() {
        n if n < MIN_WORD_CHARS => 0,
        6..=7 => 1,
        _ => 2,
    }
}

/// Damerau–Levenshtein distance (optimal string alignment: insertions,
/// deletions, substitutions and transpositions of neighbours), by character.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best =
                (d[(i - 1) * width + j] + 1).min(d[i * width + j - 1] + 1).min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The correction of `word` among `candidates` (best first by trigram
/// similarity): the nearest within the word's edit budget; on a tie, the
/// earlier (more similar) candidate.
pub fn best<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    let budget = max_edits(word);
    if budget == 0 {
        return None;
    }
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = edit_distance(word, candidate);
        if distance >= 1 && distance <= budget && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// `q` with every word found in `fixes` (by its lowercase form) replaced;
/// everything else (other words, punctuation, spacing) is kept as typed.
pub fn apply(q: &str, fixes: &HashMap<String, String>) -> String {
    if fixes.is_empty() {
        return q.to_string();
    }
    let mut out = String::with_capacity(q.len() + 8);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match fixes.get(&word.to_lowercase()) {
            Some(fix) => out.push_str(fix),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in q.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn edit_distance_counts_transpositions_as_one() {
        assert_eq!(edit_distance("heeter", "heater"), 1);
        assert_eq!(edit_distance("aquarim", "aquarium"), 1);
        assert_eq!(edit_distance("retreiver", "retriever"), 1);
        assert_eq!(edit_distance("daschund", "dachshund"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("hündin", "hundin"), 1, "characters, not bytes");
    }

    #[test]
    fn the_budget_grows_with_the_word() {
        assert_eq!((max_edits("gray"), max_edits("house")), (0, 0));
        assert_eq!((max_edits("heeter"), max_edits("aquarim")), (1, 1));
        assert_eq!((max_edits("chinchila"), max_edits("orthopedic")), (2, 2));
    }

    #[test]
    fn best_picks_the_nearest_within_budget() {
        assert_eq!(best("heeter", &strings(&["heat", "heater", "meter"])), Some("heater"));
        assert_eq!(best("aquarim", &strings(&["aquariums", "aquarium"])), Some("aquarium"));
        // Short words are left alone, however close a candidate is.
        assert_eq!(best("house", &strings(&["horse"])), None);
        // Too far for a 7-letter word.
        assert_eq!(best("kitchen", &strings(&["kitten"])), None);
        assert_eq!(best("stabling", &strings(&["stable"])), None);
        assert_eq!(best("anything", &[]), None);
    }

    #[test]
    fn apply_replaces_whole_words_only_and_keeps_the_rest() {
        let fixes: HashMap<String, String> =
            [("aquarim", "aquarium"), ("heeter", "heater")].map(|(a, b)| (a.to_string(), b.to_string())).into();
        assert_eq!(apply("Aquarim heeter, 50 W!", &fixes), "aquarium heater, 50 W!");
        assert_eq!(apply("aquarimx heeter", &fixes), "aquarimx heater");
        assert_eq!(apply("nothing to fix", &HashMap::new()), "nothing to fix");
    }
}
