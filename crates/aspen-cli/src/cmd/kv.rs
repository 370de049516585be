//! `aspen kv`: get, put, scan, delete, compare-and-swap and transactions.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aspen_client::{Client, LeaseId, ReadConsistency, ScanRequest, Txn, TxnOpResult, key_successor, prefix_end};
use aspen_core::limits::MAX_VALUE_BYTES;
use serde_json::{Value, json};

use crate::context::{AlreadyReported, Ctx};
use crate::output::{self, kv_json, kv_line, opt_kv_json, text};
use crate::txn_parse::{parse_compare, parse_op};

#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Set a key. The value is the argument, the content of --file, or stdin (when omitted or `-`).
    Put {
        key: String,
        /// The value; `-` or omitted reads stdin.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Attach the key to this lease (see `aspen lease grant`).
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
    },
    /// Print a key's value (raw bytes; --json adds its metadata). Linearizable unless --stale.
    Get {
        key: String,
        /// Read from the contacted node's state, which may lag behind.
        #[arg(long)]
        stale: bool,
    },
    /// List keys starting with a prefix as key=value lines, in key order.
    Scan {
        prefix: String,
        /// Most keys to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start at this key (inclusive), to continue an earlier scan.
        #[arg(long, value_name = "KEY")]
        from: Option<String>,
        /// Read from the contacted node's state, which may lag behind.
        #[arg(long)]
        stale: bool,
        /// Print keys only (values are not sent).
        #[arg(long)]
        keys_only: bool,
    },
    /// Delete a key, or every key under --prefix.
    Delete {
        #[arg(required_unless_present = "prefix")]
        key: Option<String>,
        /// Delete every key starting with this prefix.
        #[arg(long, conflicts_with = "key")]
        prefix: Option<String>,
    },
    /// Set a key only if it holds the expected value (or, with --expect-absent, does not exist).
    /// Exits with status 1 when the compare fails.
    Cas {
        key: String,
        /// The value the key must hold.
        #[arg(long, required_unless_present = "expect_absent")]
        expect: Option<String>,
        /// The key must not exist.
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
        /// The new value.
        new: String,
    },
    /// Run a transaction: if every --if compare holds, run the --then ops, else the --else ops.
    ///
    /// Compares: `value(KEY) OP "str"`, `version(KEY) OP N`, `create_rev(KEY) OP N`,
    /// `mod_rev(KEY) OP N`, `lease(KEY) OP N`, with OP one of == != < >.
    /// Ops: `put KEY VALUE`, `del KEY`, `get KEY`. Quote keys and values with ' or ".
    Txn {
        /// A compare; repeatable, all must hold.
        #[arg(long = "if", value_name = "COMPARE")]
        compares: Vec<String>,
        /// An op run when the compares hold; repeatable.
        #[arg(long = "then", value_name = "OP")]
        then_ops: Vec<String>,
        /// An op run otherwise; repeatable.
        #[arg(long = "else", value_name = "OP")]
        else_ops: Vec<String>,
    },
}

fn consistency(stale: bool) -> ReadConsistency {
    if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable }
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: KvCommand) -> anyhow::Result<()> {
    match cmd {
        KvCommand::Put { key, value, file, lease } => put(ctx, client, key, value, file, lease).await,
        KvCommand::Get { key, stale } => get(ctx, client, key, stale).await,
        KvCommand::Scan { prefix, limit, from, stale, keys_only } => {
            scan(ctx, client, prefix, limit, from, stale, keys_only).await
        }
        KvCommand::Delete { key, prefix } => delete(ctx, client, key, prefix).await,
        KvCommand::Cas { key, expect, expect_absent: _, new } => cas(ctx, client, key, expect, new).await,
        KvCommand::Txn { compares, then_ops, else_ops } => txn(ctx, client, compares, then_ops, else_ops).await,
    }
}

/// Reads at most one byte over the value limit, so an oversized input is refused without
/// reading all of it.
fn read_value(source: impl Read, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut value = Vec::new();
    source.take(MAX_VALUE_BYTES as u64 + 1).read_to_end(&mut value).with_context(|| format!("cannot read {what}"))?;
    Ok(value)
}

async fn put(
    ctx: &Ctx,
    client: &Client,
    key: String,
    value: Option<String>,
    file: Option<PathBuf>,
    lease: Option<u64>,
) -> anyhow::Result<()> {
    let value = match (value, file) {
        (_, Some(path)) => {
            let f = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            read_value(f, &path.display().to_string())?
        }
        (Some(v), None) if v != "-" => v.into_bytes(),
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the value from stdin; end it with Ctrl-D");
            }
            read_value(std::io::stdin().lock(), "stdin")?
        }
    };
    aspen_core::validate::key(key.as_bytes())?;
    aspen_core::validate::value(&value)?;
    let result = match lease {
        Some(id) => client.put_with_lease(&key, value, LeaseId(id)).await?,
        None => client.put(&key, value).await?,
    };
    if ctx.json {
        output::print_json(&json!({"revision": result.revision, "prev": opt_kv_json(result.prev.as_ref())}))?;
    } else {
        output::print_line(&format!("OK revision={}", result.revision))?;
    }
    Ok(())
}

async fn get(ctx: &Ctx, client: &Client, key: String, stale: bool) -> anyhow::Result<()> {
    let result = client.get_with_revision(&key, consistency(stale)).await?;
    let Some(kv) = result.kv else {
        bail!("key not found: {key}");
    };
    if ctx.json {
        let mut v = kv_json(&kv);
        if let Value::Object(map) = &mut v {
            map.insert("read_revision".into(), json!(result.revision));
        }
        output::print_json(&v)?;
    } else {
        output::print_raw(&kv.value)?;
    }
    Ok(())
}

async fn scan(
    ctx: &Ctx,
    client: &Client,
    prefix: String,
    limit: u32,
    from: Option<String>,
    stale: bool,
    keys_only: bool,
) -> anyhow::Result<()> {
    let end = prefix_end(prefix.as_bytes());
    let start = match &from {
        Some(f) if f.as_bytes() > prefix.as_bytes() => f.as_bytes().to_vec(),
        _ => prefix.as_bytes().to_vec(),
    };
    // A node answers at most a frame's worth of bytes at once: up to `limit` keys may take
    // several pages, all read at the first page's revision.
    let mut request = ScanRequest::range(start, end.clone()).limit(limit).consistency(consistency(stale)).snapshot();
    if keys_only {
        request = request.keys_only();
    }
    let mut page = client.scan_range(request.clone()).await?;
    while page.more && (page.kvs.len() as u64) < u64::from(limit) {
        let Some(next) = page.next_start() else { break };
        request.start = next;
        request.at_revision = Some(page.revision);
        request.limit = limit - page.kvs.len() as u32;
        let more = client.scan_range(request.clone()).await?;
        page.kvs.extend(more.kvs);
        page.more = more.more;
    }
    // The key to continue from, found with a one-key scan past the last one printed.
    let next_key = match (page.more, page.kvs.last()) {
        (true, Some(last)) => {
            let after = client.scan(key_successor(&last.key), &end, 1, consistency(stale)).await?;
            after.kvs.into_iter().next().map(|kv| kv.key)
        }
        _ => None,
    };
    if ctx.json {
        let mut map = serde_json::Map::new();
        map.insert("kvs".into(), Value::Array(page.kvs.iter().map(kv_json).collect()));
        map.insert("more".into(), json!(next_key.is_some()));
        map.insert("revision".into(), json!(page.revision));
        if let Some(next) = &next_key {
            output::put_bytes(&mut map, "next_key", next);
        }
        output::print_json(&Value::Object(map))?;
        return Ok(());
    }
    for kv in &page.kvs {
        output::print_line(&if keys_only { output::text(&kv.key) } else { kv_line(kv) })?;
    }
    if let Some(next) = next_key {
        let mut hint = format!("more keys remain; continue with: aspen kv scan {}", shell_arg(prefix.as_bytes()));
        match output::shell_word(&next) {
            Some(word) => hint.push_str(&format!(" --from {word}")),
            None => hint = format!("more keys remain; the next key {} is not printable, use --json", text(&next)),
        }
        if limit != 100 {
            hint.push_str(&format!(" --limit {limit}"));
        }
        if stale {
            hint.push_str(" --stale");
        }
        eprintln!("{hint}");
    }
    Ok(())
}

fn shell_arg(bytes: &[u8]) -> String {
    output::shell_word(bytes).unwrap_or_else(|| text(bytes))
}

async fn delete(ctx: &Ctx, client: &Client, key: Option<String>, prefix: Option<String>) -> anyhow::Result<()> {
    let result = match (key, prefix) {
        (_, Some(prefix)) => {
            if prefix.is_empty() {
                bail!("refusing to delete every key: --prefix is empty");
            }
            client.delete_prefix(&prefix).await?
        }
        (Some(key), None) => client.delete(&key).await?,
        (None, None) => bail!("name a KEY or a --prefix to delete"),
    };
    if ctx.json {
        output::print_json(&json!({"deleted": result.deleted, "revision": result.revision}))?;
    } else {
        output::print_line(&format!("deleted {} revision={}", result.deleted, result.revision))?;
    }
    Ok(())
}

async fn cas(ctx: &Ctx, client: &Client, key: String, expect: Option<String>, new: String) -> anyhow::Result<()> {
    let expected = expect.map(String::into_bytes);
    let outcome = client.cas(&key, expected.clone(), new).await?;
    if ctx.json {
        output::print_json(&json!({
            "succeeded": outcome.succeeded,
            "revision": outcome.revision,
            "current": opt_kv_json(outcome.current.as_ref()),
        }))?;
        if !outcome.succeeded {
            return Err(AlreadyReported("compare failed".into()).into());
        }
        return Ok(());
    }
    if outcome.succeeded {
        output::print_line(&format!("OK revision={}", outcome.revision))?;
        return Ok(());
    }
    let found = match &outcome.current {
        None => "it does not exist".to_string(),
        Some(kv) => format!("it holds {:?} (mod_revision={})", text(&kv.value), kv.mod_revision),
    };
    let wanted = match &expected {
        None => "absent".to_string(),
        Some(v) => format!("{:?}", text(v)),
    };
    bail!("compare failed: expected {key} to be {wanted}, but {found}")
}

async fn txn(
    ctx: &Ctx,
    client: &Client,
    compares: Vec<String>,
    then_ops: Vec<String>,
    else_ops: Vec<String>,
) -> anyhow::Result<()> {
    let txn = Txn {
        compare: compares.iter().map(|c| parse_compare(c)).collect::<Result<_, _>>()?,
        success: then_ops.iter().map(|o| parse_op(o)).collect::<Result<_, _>>()?,
        failure: else_ops.iter().map(|o| parse_op(o)).collect::<Result<_, _>>()?,
    };
    aspen_core::validate::txn(&txn)?;
    let branch_ops = txn.clone();
    let resp = client.txn(txn).await?;
    let ran = if resp.succeeded { &branch_ops.success } else { &branch_ops.failure };
    if ctx.json {
        let results: Vec<Value> = resp.results.iter().zip(ran).map(|(r, op)| result_json(r, op)).collect();
        output::print_json(&json!({"succeeded": resp.succeeded, "revision": resp.revision, "results": results}))?;
        return Ok(());
    }
    output::print_line(&format!("{} revision={}", if resp.succeeded { "SUCCEEDED" } else { "FAILED" }, resp.revision))?;
    for (result, op) in resp.results.iter().zip(ran) {
        output::print_line(&result_line(result, op))?;
    }
    Ok(())
}

fn op_key(op: &aspen_client::TxnOp) -> &[u8] {
    match op {
        aspen_client::TxnOp::Put { key, .. }
        | aspen_client::TxnOp::Delete { key }
        | aspen_client::TxnOp::Get { key } => key,
    }
}

fn result_line(result: &TxnOpResult, op: &aspen_client::TxnOp) -> String {
    let key = text(op_key(op));
    match result {
        TxnOpResult::Put { .. } => format!("put {key}"),
        TxnOpResult::Delete { deleted } => format!("del {key} deleted={deleted}"),
        TxnOpResult::Get { kv: Some(kv) } => format!("get {}", kv_line(kv)),
        TxnOpResult::Get { kv: None } => format!("get {key} (not found)"),
    }
}

fn result_json(result: &TxnOpResult, op: &aspen_client::TxnOp) -> Value {
    let mut map = output::bytes_object("key", op_key(op));
    match result {
        TxnOpResult::Put { prev } => {
            map.insert("op".into(), json!("put"));
            map.insert("prev".into(), opt_kv_json(prev.as_ref()));
        }
        TxnOpResult::Delete { deleted } => {
            map.insert("op".into(), json!("del"));
            map.insert("deleted".into(), json!(deleted));
        }
        TxnOpResult::Get { kv } => {
            map.insert("op".into(), json!("get"));
            map.insert("kv".into(), opt_kv_json(kv.as_ref()));
        }
    }
    Value::Object(map)
}
