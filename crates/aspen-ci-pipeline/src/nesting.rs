//! How deeply a parsed pipeline nests, measured before Nickel compiles it.
//!
//! Nickel's typechecker and evaluator recurse on the native stack once per level of nesting,
//! several KiB each, and a stack overflow aborts the whole process. Parsing does not recurse
//! that way, so a parsed file is measured here and refused past [`MAX_NESTING`] levels.
//!
//! A level is an expression inside another, and also what one node hides: each element of a
//! field path (`a.b.c = 1` builds three records) and each level of a destructuring pattern.
//! Types are not counted: Nickel handles them as deep as the size limit allows.

use nickel_lang_core::{
    ast::{Ast, Node, pattern::Pattern, pattern::PatternData},
    position::TermPos,
    traverse::{TraverseAlloc, TraverseControl},
};

use crate::MAX_NESTING;

/// Where the file first nests deeper than [`MAX_NESTING`], if it does. The walk stops there,
/// so it stays shallow whatever the file.
pub(crate) fn too_deep<'ast>(ast: &'ast Ast<'ast>) -> Option<TermPos> {
    ast.traverse_ref(
        &mut |node: &Ast<'_>, depth: &usize| {
            let depth = depth + 1 + hidden_levels(node);
            if depth > MAX_NESTING {
                TraverseControl::Return(node.pos)
            } else {
                TraverseControl::ContinueWithScope(depth)
            }
        },
        &0,
    )
}

/// The levels one node adds beyond itself: the longest field path of a record beyond its first
/// element, the deepest pattern a binding destructures with beyond its top.
fn hidden_levels(node: &Ast<'_>) -> usize {
    let patterns: Vec<&Pattern<'_>> = match &node.node {
        Node::Record(record) => {
            return record.field_defs.iter().map(|field| field.path.len().saturating_sub(1)).max().unwrap_or(0);
        }
        Node::Let { bindings, .. } => bindings.iter().map(|binding| &binding.pattern).collect(),
        Node::Fun { args, .. } => args.iter().collect(),
        Node::Match(matched) => matched.branches.iter().map(|branch| &branch.pattern).collect(),
        _ => return 0,
    };
    patterns.into_iter().map(|pattern| pattern_depth(pattern, MAX_NESTING).saturating_sub(1)).max().unwrap_or(0)
}

/// How deep `pattern` nests, counting no further than `limit` so the recursion stays bounded.
fn pattern_depth(pattern: &Pattern<'_>, limit: usize) -> usize {
    if limit == 0 {
        return 0;
    }
    let deepest_inner = |inner: &mut dyn Iterator<Item = &Pattern<'_>>| {
        inner.map(|pattern| pattern_depth(pattern, limit - 1)).max().unwrap_or(0)
    };
    let inner = match &pattern.data {
        PatternData::Record(record) => deepest_inner(&mut record.patterns.iter().map(|field| &field.pattern)),
        PatternData::Array(array) => deepest_inner(&mut array.patterns.iter()),
        PatternData::Enum(variant) => deepest_inner(&mut variant.pattern.iter()),
        PatternData::Or(alternatives) => deepest_inner(&mut alternatives.patterns.iter()),
        PatternData::Wildcard | PatternData::Any(_) | PatternData::Constant(_) => 0,
    };
    1 + inner
}
