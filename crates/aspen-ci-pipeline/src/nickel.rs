//! Evaluation of a pipeline file with Nickel, the user's source and Aspen's contract both held
//! in memory, and the rendering of Nickel's errors as plain text.
//!
//! The contract is applied the way `nickel export --apply-contract` applies one, so messages
//! read as they would from the Nickel CLI. Nothing here touches the filesystem: an `import` is
//! refused before evaluation, since resolving it would read the file beside the pipeline.

use std::{path::PathBuf, rc::Rc};

use nickel_lang_core::{
    ast::{Ast, InputFormat, Node},
    cache::{CacheHub, SourcePath},
    error::{
        Diagnostic, Error as NickelError, IntoDiagnostics, Label as DiagnosticLabel, NullReporter,
        report::{ColorOpt, report_as_str},
    },
    eval::{VirtualMachine, VmContext, cache::CacheImpl, value::NickelValue},
    files::{FileId, Files},
    label::Label,
    position::{PosIdx, RawSpan, TermPos},
    term::RuntimeContract,
    traverse::TraverseAlloc,
    typ::{Type, TypeF},
};
use serde::Deserialize;

use crate::{CONTRACT, MAX_NESTING, Pipeline, PipelineError, nesting};

/// The contract's name in messages: where its fields are declared.
const CONTRACT_FILE_NAME: &str = "<aspen ci contract>";

/// The name and text messages point at when the contract refuses the pipeline as a whole (a
/// misspelled top-level field), where the Nickel CLI would show its `--apply-contract` argument.
const CONTRACT_APPLICATION_NAME: &str = "<aspen ci>";
const CONTRACT_APPLICATION_TEXT: &str = "the pipeline contract (shown by `aspen ci contract`)";

type Vm = VmContext<CacheHub, CacheImpl>;

/// Parses, typechecks and fully evaluates `source` with the contract applied, and reads the
/// result as a [`Pipeline`]. Only Nickel's part: Aspen's own rules are checked by the caller.
pub(crate) fn evaluate_with_contract(file_name: &str, source: &str) -> Result<Pipeline, PipelineError> {
    let mut cache = CacheHub::new();
    let user_id =
        cache.sources.add_string(SourcePath::Path(PathBuf::from(file_name), InputFormat::Nickel), source.to_owned());
    if let Err(errors) = cache.parse_to_ast(user_id) {
        return Err(nickel_error(&cache.sources.files, errors));
    }
    // Fail closed: without the parsed file to look at, an import could go unseen.
    let Some(ast) = cache.asts.get(user_id) else {
        return Err(PipelineError::Invalid(format!(
            "{file_name}: internal error: the parsed pipeline is missing from Nickel's cache"
        )));
    };
    if let Some(position) = nesting::too_deep(ast) {
        return Err(nesting_refused(&cache.sources.files, file_name, position));
    }
    if let Some(span) = first_import(ast) {
        return Err(import_refused(&cache.sources.files, span));
    }
    let contract_id = cache
        .sources
        .add_string(SourcePath::Path(PathBuf::from(CONTRACT_FILE_NAME), InputFormat::Nickel), CONTRACT.to_owned());
    let application_id = cache.sources.add_string(
        SourcePath::Path(PathBuf::from(CONTRACT_APPLICATION_NAME), InputFormat::Nickel),
        CONTRACT_APPLICATION_TEXT.to_owned(),
    );

    // Warnings and `std.trace` output go nowhere: a pipeline has no console.
    let mut vm: Vm = VmContext::new(cache, std::io::sink(), NullReporter {});
    let value = evaluate_in(&mut vm, user_id, contract_id, application_id)
        .map_err(|error| nickel_error(&vm.import_resolver.sources.files, error))?;
    Pipeline::deserialize(value).map_err(|error| {
        // The contract admits only values of the shapes `Pipeline` reads, so this is a
        // mismatch between contract.ncl and the Rust types, not a user mistake.
        PipelineError::Invalid(format!(
            "{file_name}: the evaluated pipeline does not have the shape Aspen reads \
             (contract and reader disagree): {error}"
        ))
    })
}

/// The evaluation proper, every step of which reports Nickel's own error.
fn evaluate_in(
    vm: &mut Vm,
    user_id: FileId,
    contract_id: FileId,
    application_id: FileId,
) -> Result<NickelValue, NickelError> {
    let body = vm.prepare_eval(user_id)?;
    vm.import_resolver.prepare(&mut vm.pos_table, contract_id)?;
    let contract = vm
        .import_resolver
        .terms
        .get_owned(contract_id)
        .ok_or_else(|| internal("the prepared contract is missing from the cache".to_owned()))?;

    // A refusal of the pipeline as a whole (a misspelled top-level field) shows the contract's
    // position: this one line, rather than the whole contract file.
    let application_span = vm.import_resolver.sources.files.source_span(application_id);
    let contract_type = Type { typ: TypeF::Contract(contract.clone()), pos: TermPos::Original(application_span) };
    let label =
        Label { typ: Rc::new(contract_type), span: vm.pos_table.push(application_span.into()), ..Default::default() };
    let checked = RuntimeContract::apply_all(body, [RuntimeContract::new(contract, label)], PosIdx::NONE);
    Ok(VirtualMachine::new(vm).eval_full_for_export(checked)?)
}

/// The span of the first `import` in the file, in source order of the traversal.
fn first_import<'ast>(ast: &'ast Ast<'ast>) -> Option<RawSpan> {
    ast.find_map(|node: &Ast<'_>| match node.node {
        Node::Import(_) => node.pos.into_opt(),
        _ => None,
    })
}

fn nesting_refused(files: &Files, file_name: &str, position: TermPos) -> PipelineError {
    let problem = format!("the pipeline nests expressions more than {MAX_NESTING} levels deep");
    let Some(span) = position.into_opt() else {
        return PipelineError::Invalid(format!("{file_name}: {problem}"));
    };
    let diagnostic = Diagnostic::error()
        .with_message(problem)
        .with_labels(vec![
            DiagnosticLabel::primary(span.src_id, span.to_range::<usize>()).with_message("nested too deep here"),
        ])
        .with_notes(vec!["Name intermediate values with `let` bindings, or split long operator chains.".to_owned()]);
    PipelineError::Invalid(render(files, diagnostic))
}

/// A Nickel-style diagnostic for an `import`, so it reads like every other error about the file.
fn import_refused(files: &Files, span: RawSpan) -> PipelineError {
    let diagnostic = Diagnostic::error()
        .with_message("imports are not allowed in a pipeline file")
        .with_labels(vec![DiagnosticLabel::primary(span.src_id, span.to_range::<usize>()).with_message("this import")])
        .with_notes(vec!["A pipeline is one file: define what you would import inside it (`let ... in`).".to_owned()]);
    PipelineError::Invalid(render(files, diagnostic))
}

fn nickel_error(files: &Files, error: impl IntoDiagnostics) -> PipelineError {
    PipelineError::Nickel(render(files, error))
}

/// Renders Nickel's diagnostics without colour, each with its file:line:column.
fn render(files: &Files, error: impl IntoDiagnostics) -> String {
    // `Files` is copy-on-write: the clone is cheap, and reporting may add snippets to it.
    let mut files = files.clone();
    let text = report_as_str(&mut files, error, ColorOpt::Never);
    text.trim_end().to_owned()
}

fn internal(message: String) -> NickelError {
    NickelError::IOError(nickel_lang_core::error::IOError(format!(
        "internal error in Aspen's pipeline contract: {message}"
    )))
}
