//! `reconix plan`: prints what each loop would do now, and applies nothing.
//!
//! It observes through a read-only view of the state directory's database (or an empty one when
//! the daemon never ran) and the real Nix/git, like a dry run of every reconcile. Builds that a
//! running daemon has in flight are not visible here, so they may show up as `dispatch`. Loops of
//! hosted forges read the forge's API (GET requests only) to observe.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use reconix_reconcilers::builders::BuildersLoop;
use reconix_reconcilers::builds::Builds;
use reconix_reconcilers::caches::Caches;
use reconix_reconcilers::evaluations::Evaluations;
use reconix_reconcilers::forges::ForgeHealthLoop;
use reconix_reconcilers::gcroots::GcRoots;
use reconix_reconcilers::heads::Heads;
use reconix_reconcilers::retention::Retention;
use reconix_reconcilers::runtime::{Reconciler, dry_run};
use reconix_reconcilers::statuses::Statuses;
use reconix_reconcilers::webhooks::Webhooks;
use reconix_reconcilers::{Ctx, LivePorts};
use reconix_spec::{Spec, Timestamp};
use reconix_status::{OpenMode, Status, StatusDb};
use serde_json::{Value, json};

use super::serve::{load_spec_or_report, nix_client, runtime};
use super::{Output, SpecArgs};

/// Runs `reconix plan`.
pub(crate) fn run(args: &SpecArgs, output: Output, nix_store: Option<&str>) -> Result<ExitCode> {
    let Some(spec) = load_spec_or_report(args) else {
        return Ok(ExitCode::FAILURE);
    };
    let db_path = spec.state_dir.join("reconix.db");
    let db = if db_path.exists() {
        StatusDb::open(&db_path, OpenMode::ReadOnly)
            .with_context(|| format!("opening {}", db_path.display()))?
    } else {
        StatusDb::open_memory()?
    };
    let spec = Arc::new(spec);
    let (_tx, rx) = tokio::sync::watch::channel(Arc::clone(&spec));
    let ctx = Arc::new(Ctx::new(
        LivePorts::new(nix_client(nix_store)),
        Status::new(db),
        rx,
    ));
    let loops = runtime()?.block_on(async {
        let now = Timestamp::now();
        Ok::<_, anyhow::Error>(vec![
            plans(&Evaluations::new(), &spec, &ctx, now).await,
            plans(&Builds::new(), &spec, &ctx, now).await,
            plans(&GcRoots::new(), &spec, &ctx, now).await,
            plans(&Heads::new(), &spec, &ctx, now).await,
            plans(&Webhooks::new(), &spec, &ctx, now).await,
            plans(&Statuses::new(), &spec, &ctx, now).await,
            plans(&ForgeHealthLoop::new(), &spec, &ctx, now).await,
            plans(&BuildersLoop::new(), &spec, &ctx, now).await,
            plans(&Caches::new(), &spec, &ctx, now).await,
            plans(&Retention::new(), &spec, &ctx, now).await,
        ])
    })?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&loops)?),
        Output::Table => print_table(&loops),
    }
    Ok(ExitCode::SUCCESS)
}

async fn plans<R>(r: &R, spec: &Arc<Spec>, ctx: &Arc<R::Context>, now: Timestamp) -> Value
where
    R: Reconciler<Spec = Spec>,
{
    let plans = match dry_run(r, spec, ctx, now).await {
        Ok(plans) => plans,
        Err(err) => {
            return json!({ "loop": R::NAME, "error": format!("{:#}", anyhow::Error::new(err)) });
        }
    };
    let keys: Vec<Value> = plans
        .into_iter()
        .map(|(key, plan)| match plan {
            Ok(plan) => json!({ "key": key.to_string(), "steps": plan.steps, "then": format!("{:?}", plan.then) }),
            Err(err) => json!({ "key": key.to_string(), "error": format!("{:#}", anyhow::Error::new(err)) }),
        })
        .collect();
    json!({ "loop": R::NAME, "keys": keys })
}

fn print_table(loops: &[Value]) {
    for l in loops {
        println!("loop {}", l["loop"].as_str().unwrap_or("?"));
        let keys = l["keys"].as_array().map(Vec::as_slice).unwrap_or_default();
        if keys.is_empty() {
            println!("  (no keys)");
        }
        for k in keys {
            let key = k["key"].as_str().unwrap_or("?");
            if let Some(err) = k["error"].as_str() {
                println!("  {key}: cannot observe: {err}");
                continue;
            }
            let steps = k["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
            if steps.is_empty() {
                println!("  {key}: in sync");
            }
            for s in steps {
                let mut fields = s.as_object().cloned().unwrap_or_default();
                let name = fields
                    .remove("step")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let rest: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        v => format!("{k}={v}"),
                    })
                    .collect();
                println!("  {key}: {name} {}", rest.join(" "));
            }
        }
    }
}
