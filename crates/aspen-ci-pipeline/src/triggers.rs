//! Which pushes start a run: branch and tag patterns, matched against the pushed ref.

use crate::Triggers;

const BRANCH_REF_PREFIX: &str = "refs/heads/";
const TAG_REF_PREFIX: &str = "refs/tags/";

impl Triggers {
    /// Whether a push to `ref_name` (full ref, "refs/heads/main" or "refs/tags/v1") starts a run,
    /// given the repository's default branch (used when `branches` is empty: then only the
    /// default branch triggers). `default_branch` may be a name or a full ref. Other refs (notes,
    /// patches) never start a run here.
    pub fn matches_push(&self, ref_name: &str, default_branch: &str) -> bool {
        if let Some(branch) = ref_name.strip_prefix(BRANCH_REF_PREFIX) {
            if self.branches.is_empty() {
                let default_branch = default_branch.strip_prefix(BRANCH_REF_PREFIX).unwrap_or(default_branch);
                return branch == default_branch;
            }
            return any_matches(&self.branches, branch);
        }
        if let Some(tag) = ref_name.strip_prefix(TAG_REF_PREFIX) {
            return any_matches(&self.tags, tag);
        }
        false
    }
}

fn any_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|pattern| pattern_matches(pattern, name))
}

/// One element of a pattern.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Token {
    /// This character, exactly.
    Literal(char),
    /// `*`: any run of characters other than '/', maybe empty.
    Star,
    /// `**`: any run of characters, maybe empty.
    DoubleStar,
}

fn tokenize(pattern: &str) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            '*' if chars.next_if_eq(&'*').is_some() => Token::DoubleStar,
            '*' => Token::Star,
            other => Token::Literal(other),
        };
        tokens.push(token);
    }
    tokens
}

/// Matches a branch or tag name against a trigger pattern: exact characters, `*` for any run
/// of characters except '/', `**` for any run at all. "release/*" matches "release/1.0" but
/// not "release/a/b"; "release/**" matches both.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    // The pattern as an automaton run over the name, one set of live positions per character:
    // time linear in pattern × name whatever the stars, unlike backtracking.
    let tokens = tokenize(pattern);
    let mut live = vec![false; tokens.len() + 1];
    live[0] = true;
    skip_stars(&tokens, &mut live);
    for c in name.chars() {
        let mut next = vec![false; tokens.len() + 1];
        for (position, token) in tokens.iter().enumerate() {
            if !live[position] {
                continue;
            }
            match token {
                Token::Literal(expected) if *expected == c => next[position + 1] = true,
                Token::Star if c != '/' => next[position] = true,
                Token::DoubleStar => next[position] = true,
                _ => {}
            }
        }
        skip_stars(&tokens, &mut next);
        if !next.contains(&true) {
            return false;
        }
        live = next;
    }
    live[tokens.len()]
}

/// A star may match nothing: a live position at a star makes the one after it live too.
fn skip_stars(tokens: &[Token], live: &mut [bool]) {
    for (position, token) in tokens.iter().enumerate() {
        if live[position] && matches!(token, Token::Star | Token::DoubleStar) {
            live[position + 1] = true;
        }
    }
}
