//! `reconix plan`: prints what each loop would do now, and applies nothing.
//!
//! It observes through a read-only view of the state directory's database (or an empty one when
//! the daemon never ran) and the real Nix/git, like a dry run of every reconcile. Builds that a
//! running daemon has in flight are not visible here, so they may show up as `dispatch`. Loops of
//! hosted forges read the forge's API (GET requests only) to observe.

use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use reconix_reconcilers::registry::{Loop, LoopVisitor, visit_loops};
use reconix_reconcilers::runtime::{Reconciler, dry_run};
use reconix_reconcilers::{Ctx, LivePorts, Ports};
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
    let loops = runtime()?.block_on(every_plan(&spec, &ctx, Timestamp::now()));
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&loops)?),
        Output::Table => print_table(&loops),
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the plans of every registered loop, one JSON object per loop, in the registry's order.
async fn every_plan<P: Ports>(spec: &Arc<Spec>, ctx: &Arc<Ctx<P>>, now: Timestamp) -> Vec<Value> {
    struct Plans<'a, P> {
        spec: &'a Arc<Spec>,
        ctx: &'a Arc<Ctx<P>>,
        now: Timestamp,
        loops: Vec<Pin<Box<dyn Future<Output = Value> + 'a>>>,
    }
    impl<'a, P: Ports> LoopVisitor<P> for Plans<'a, P> {
        fn visit<R: Loop<P>>(&mut self, reconciler: R) {
            let (spec, ctx, now) = (self.spec, self.ctx, self.now);
            self.loops.push(Box::pin(
                async move { plans(&reconciler, spec, ctx, now).await },
            ));
        }
    }
    let mut visitor = Plans {
        spec,
        ctx,
        now,
        loops: Vec::new(),
    };
    visit_loops(&mut visitor);
    let mut loops = Vec::with_capacity(visitor.loops.len());
    // One loop after the other, as a dry run of each reconcile.
    for plan in visitor.loops {
        loops.push(plan.await);
    }
    loops
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

#[cfg(test)]
mod tests {
    use reconix_reconcilers::registry::loop_names;
    use reconix_status::{Status, StatusDb};

    use super::*;

    #[test]
    fn plan_should_print_every_registered_loop_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Arc::new(Spec {
            state_dir: dir.path().to_owned(),
            ..Spec::default()
        });
        let (_tx, rx) = tokio::sync::watch::channel(Arc::clone(&spec));
        let ctx = Arc::new(Ctx::new(
            LivePorts::new(nix_client(None)),
            Status::new(StatusDb::open_memory().unwrap()),
            rx,
        ));
        let loops = runtime()
            .unwrap()
            .block_on(every_plan(&spec, &ctx, Timestamp(0)));
        let printed: Vec<&str> = loops.iter().map(|l| l["loop"].as_str().unwrap()).collect();
        assert_eq!(printed, loop_names::<LivePorts<reconix_nixcli::NixCli>>());
    }
}
