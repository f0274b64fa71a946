//! The daemon's own signal and reload paths: a changed spec file is picked up, SIGHUP re-runs
//! the loops, an invalid spec (or a truncated one without repos) is rejected while the old one
//! stays, SIGTERM stops cleanly.

use std::time::Duration;

use anyhow::{Result, ensure};
use reconix_e2e::{DEADLINE, GitRepo, TestDaemon, local_spec, salt};
use serde_json::Value;

fn flake(salt: &str) -> String {
    format!(
        r#"{{ outputs = {{ self }}: {{ packages.x86_64-linux.x = derivation {{
  name = "x"; system = "x86_64-linux"; salt = "{salt}"; builder = "/bin/sh"; args = [ "-c" "echo x > $out" ];
}}; }}; }}
"#
    )
}

#[test]
fn spec_reload_sighup_and_sigterm_should_behave() -> Result<()> {
    let (one, two) = (GitRepo::new()?, GitRepo::new()?);
    let salt = salt();
    let rev1 = one.commit_flake(&flake(&format!("{salt}-1")), "one")?;
    let rev2 = two.commit_flake(&flake(&format!("{salt}-2")), "two")?;
    let mut d = TestDaemon::start_with_env(
        &local_spec(one.path(), 2),
        &[("RECONIX_LOG_FORMAT", "json")],
    )?;
    d.wait_evaluation(&rev1, "finished")?;

    // Logs are JSON lines when asked for.
    let log = d.log();
    let first = log.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let parsed: Value = serde_json::from_str(first)?;
    assert!(
        parsed.get("level").is_some(),
        "not a JSON log line: {first}"
    );

    // Editing the spec file adds a repository: the daemon picks it up by itself.
    let spec = std::fs::read_to_string(d.spec_path())?;
    let with_two = spec.replace(
        "        branches: [main]\n",
        &format!(
            "        branches: [main]\n      other:\n        path: {}\n        branches: [main]\n",
            two.path().display()
        ),
    );
    std::fs::write(d.spec_path(), &with_two)?;
    d.wait_evaluation(&rev2, "finished")?;

    // An invalid spec is rejected with its errors in the log; the daemon keeps serving.
    std::fs::write(d.spec_path(), "forges: [not, a, map]\n")?;
    d.signal("HUP")?;
    d.wait_for("the rejected spec's error in the log", DEADLINE, |d| {
        Ok(d.log()
            .lines()
            .any(|l| l.contains("spec.yaml:1:") && l.to_lowercase().contains("error"))
            .then_some(()))
    })?;
    assert_eq!(d.evaluations()?.len(), 2, "still serving the old spec");

    // A truncated spec (what an editor's two-step save can leave for a moment) that still
    // validates but has no repository is refused too: the running spec keeps both repos.
    let truncated = with_two
        .split_once("    repos:\n")
        .map_or("", |(head, _)| head);
    std::fs::write(d.spec_path(), truncated)?;
    d.signal("HUP")?;
    d.wait_for("the truncated spec's refusal in the log", DEADLINE, |d| {
        Ok(d.log()
            .lines()
            .any(|l| l.contains("the spec has no repository while the running one has 2"))
            .then_some(()))
    })?;

    // A spec truncated to nothing (a failed deploy), picked up by the poll: refused, loudly —
    // in /api/v1/status and on the overview page — and both repositories stay in the daemon's
    // view and keep being built (the old daemon dropped them all within 12 s).
    std::fs::write(d.spec_path(), "")?;
    let status = d.wait_for("the empty spec's refusal in the status", DEADLINE, |d| {
        let status = d.get_json("/api/v1/status")?;
        Ok(status["spec_error"]
            .as_str()
            .is_some_and(|e| e.contains("the spec is empty"))
            .then_some(status))
    })?;
    eprintln!("refused: {}", status["spec_error"]);
    ensure!(
        d.get_text("/")?.contains("the spec file was REJECTED"),
        "the overview page says so"
    );
    let rev4 = two.commit_flake(&flake(&format!("{salt}-4")), "four")?;
    d.wait_evaluation(&rev4, "finished")?;
    let page = d.get_text("/")?;
    ensure!(
        page.contains("here/demo") && page.contains("here/other"),
        "both repositories are still in view"
    );

    // SIGHUP with the valid spec back: accepted, and the next commit is still evaluated.
    std::fs::write(d.spec_path(), &with_two)?;
    d.signal("HUP")?;
    let rev3 = one.commit_flake(&flake(&format!("{salt}-3")), "three")?;
    d.wait_evaluation(&rev3, "finished")?;
    ensure!(
        d.get_json("/api/v1/status")?["spec_error"].is_null(),
        "a good reload clears the alarm"
    );

    // SIGTERM: graceful shutdown, exit code 0.
    d.signal("TERM")?;
    assert_eq!(d.wait_exit(Duration::from_secs(30))?, Some(0));
    Ok(())
}
