//! The status page in a real browser: headless Chromium (Debian's `chromium`, which `make test`
//! installs through `scripts/install-chromium.sh`) opens the overview, an evaluation with a
//! failing job, that job's log and the live log of a running build, checks what a person reads
//! there, and saves the screenshots that README.md and docs/architecture.md show
//! (`docs/img/*.png`).
//!
//! Chromium is driven over the DevTools protocol on `--remote-debugging-pipe` (JSON messages
//! separated by NUL bytes on file descriptors 3 and 4): `--dump-dom` reads the DOM either at the
//! load event, before the live log's first server-sent event, or, with a virtual time budget,
//! only after the event stream closed, so neither shows the log growing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{
    DEADLINE, DaemonConfig, GitRepo, TestDaemon, http_get, http_request, jobs_by_attr,
    require_chromium, salt, tail,
};
use serde_json::{Value, json};

const P: &str = "packages.x86_64-linux.";
/// How many `tick N` lines the slow package prints, one a second.
const TICKS: u32 = 30;
/// The size of the browser window and of the screenshots.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;
/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The API token the daemon is given; the test never sends it.
const TOKEN: &str = "e2e-browser-token";

/// Three packages: `hello` builds, `broken` prints a red error line and fails, `slow` prints
/// `tick N` once a second for [`TICKS`] seconds, so that it is building while the browser looks.
fn flake(salt: &str) -> String {
    r#"{
  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = name: script: derivation {
        inherit name system;
        salt = "@SALT@";
        builder = "/bin/sh";
        args = [ "-c" script ];
      };
    in {
      packages.${system} = {
        hello = mk "hello" "echo hello > $out";
        broken = mk "broken" "echo 'compiling broken'; printf '\\033[31mred error\\033[0m: the widget is on fire\\n'; exit 1";
        slow = mk "slow" "i=1; while [ $i -le @TICKS@ ]; do echo \"tick $i\"; i=$((i+1)); sleep 1; done; echo slow > $out";
      };
    };
}
"#
    .replace("@SALT@", salt)
    .replace("@TICKS@", &TICKS.to_string())
}

fn spec(repo: &Path, token_file: &Path) -> DaemonConfig {
    DaemonConfig {
        spec: format!(
            "state-dir: {{state_dir}}\n\
             api-token-file: {}\n\
             forges:\n  here:\n    kind: local\n    poll-interval: 1s\n    repos:\n      demo:\n        path: {}\n        branches: [main]\n\
             builders:\n  local:\n    max-jobs: 3\n",
            token_file.display(),
            repo.display()
        ),
    }
}

/// Where the screenshots go: the repository's `docs/img/`.
fn img_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img")
}

/// A headless Chromium driven over `--remote-debugging-pipe`; closed when dropped.
#[derive(Debug)]
struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next_id: u64,
    profile: tempfile::TempDir,
}

/// One tab (a page target and the flat session attached to it).
#[derive(Debug, Clone)]
struct Tab {
    session: String,
}

impl Browser {
    /// Starts Chromium with a throwaway profile.
    fn launch() -> Result<Self> {
        require_chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("reconix-e2e-chromium")
            .tempdir()?;
        let stderr = File::create(profile.path().join("chromium.log"))?;
        // The shell moves our pipes to the descriptors Chromium talks on (3: commands in,
        // 4: replies out) and frees stdin and stdout.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec chromium "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-sync",
                "--disable-background-networking",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--hide-scrollbars",
                "--mute-audio",
                "--force-device-scale-factor=1",
                &format!("--window-size={WIDTH},{HEIGHT}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning chromium")?;
        let to = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            let mut byte = [0u8; 1 << 16];
            loop {
                let n = match reader.read(&mut byte) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&byte[..n]);
                while let Some(end) = buf.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&message[..end])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            child,
            to,
            from,
            next_id: 0,
            profile,
        })
    }

    /// Returns Chromium's own log (for failure messages).
    fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default(),
            30,
        )
    }

    /// Sends a DevTools command (to a tab's session, or to the browser) and returns its result.
    fn call(&mut self, tab: Option<&Tab>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method });
        message["params"] = params;
        if let Some(tab) = tab {
            message["sessionId"] = json!(tab.session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .and_then(|()| self.to.flush())
            .with_context(|| format!("sending {method} to chromium; its log:\n{}", self.log()))?;
        let start = Instant::now();
        loop {
            let left = CALL_TIMEOUT.saturating_sub(start.elapsed());
            // Events (no `id`) and replies to nobody are dropped.
            match self.from.recv_timeout(left) {
                Ok(reply) if reply["id"] == id => {
                    if let Some(err) = reply.get("error") {
                        bail!("chromium: {method} failed: {err}");
                    }
                    return Ok(reply["result"].clone());
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "chromium did not answer {method} within {CALL_TIMEOUT:?}; its log:\n{}",
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("chromium exited; its log:\n{}", self.log())
                }
            }
        }
    }

    /// Opens a new tab of [`WIDTH`]×[`HEIGHT`] on `about:blank`.
    fn tab(&mut self) -> Result<Tab> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )?;
        let tab = Tab {
            session: attached["sessionId"]
                .as_str()
                .context("no session id")?
                .to_owned(),
        };
        self.call(
            Some(&tab),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(tab)
    }

    /// Evaluates a JavaScript expression in the tab and returns its value as JSON.
    fn eval(&mut self, tab: &Tab, expression: &str) -> Result<Value> {
        let r = self.call(
            Some(tab),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("javascript failed: {e}\n{expression}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` every 200 ms until it yields something other than null or false.
    fn wait_js(
        &mut self,
        tab: &Tab,
        what: &str,
        deadline: Duration,
        expression: &str,
    ) -> Result<Value> {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            match self.eval(tab, expression) {
                Ok(Value::Null | Value::Bool(false)) => {}
                Ok(v) => return Ok(v),
                // A navigation in progress destroys the context being evaluated in.
                Err(e) => last = json!(e.to_string()),
            }
            if start.elapsed() > deadline {
                bail!("timed out after {deadline:?} waiting for {what} (last: {last})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Loads `url` in the tab and waits for its load event and deferred scripts.
    fn open(&mut self, tab: &Tab, url: &str) -> Result<()> {
        let r = self.call(Some(tab), "Page.navigate", json!({ "url": url }))?;
        if let Some(e) = r.get("errorText") {
            bail!("opening {url}: {e}");
        }
        let expr = format!(
            "document.readyState === 'complete' && location.href === {}",
            json!(url)
        );
        self.wait_js(
            tab,
            &format!("{url} to load"),
            Duration::from_secs(60),
            &expr,
        )?;
        Ok(())
    }

    /// Saves a PNG of the tab's viewport as `docs/img/NAME`.
    fn screenshot(&mut self, tab: &Tab, name: &str) -> Result<PathBuf> {
        let r = self.call(
            Some(tab),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )?;
        let png = base64_decode(r["data"].as_str().context("no screenshot data")?)?;
        ensure!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        let dir = img_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes standard base64 (the screenshot data).
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("not base64: byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff)?);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// The rows of the first table after the heading that starts with `heading`, as cell texts.
const TABLE_AFTER: &str = "function tableAfter(heading) {
  const h = [...document.querySelectorAll('h2')].find(h => h.innerText.startsWith(heading));
  for (let e = h && h.nextElementSibling; e && e.tagName !== 'H2'; e = e.nextElementSibling) {
    if (e.tagName === 'TABLE') return [...e.rows].map(r => [...r.cells].map(c => c.innerText.trim()));
  }
  return null;
}";

/// What the live log shows: the `tick N` numbers in order, whether the page is still the
/// document we marked (no reload), the stream it follows and the job's state.
const LIVE_LOG: &str = "(() => {
  const pre = document.getElementById('log');
  if (!pre) return null;
  const ticks = (pre.textContent.match(/^tick \\d+$/gm) || []).map(l => Number(l.slice(5)));
  const status = document.getElementById('live-status');
  return {
    ticks,
    marked: window.__reconixE2e === true,
    stream: pre.dataset.stream || null,
    status: status ? status.textContent : null,
    state: document.querySelector('h1 small').textContent,
  };
})()";

fn ticks_of(live: &Value) -> Vec<u64> {
    live["ticks"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn texts(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| c.as_str().unwrap_or_default().to_owned())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn status_pages_should_show_failures_and_a_live_log_in_a_real_browser() -> Result<()> {
    let started = Instant::now();
    // Chromium starts while the daemon evaluates: the slow build must still run when we look.
    let mut browser = Browser::launch()?;
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&flake(&salt()), "three packages")?;
    let secrets = tempfile::Builder::new()
        .prefix("reconix-e2e-token")
        .tempdir()?;
    let token_file = secrets.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let d = TestDaemon::start(&spec(repo.path(), &token_file))?;
    let base = d.url().to_owned();

    // The slow build is running and has logged a few lines; `broken` has failed.
    let (detail, jobs) = d.wait_for(
        "slow building with ticks and broken failed",
        DEADLINE,
        |d| {
            let Some(detail) = d.evaluation_of(&rev)? else {
                return Ok(None);
            };
            let jobs = jobs_by_attr(&detail)?;
            let state = |a: &str| jobs.get(&format!("{P}{a}")).map(|j| j["state"].clone());
            if state("slow") != Some(json!("building")) || state("broken") != Some(json!("failed"))
            {
                return Ok(None);
            }
            let slow = &jobs[&format!("{P}slow")];
            let log = d
                .get_text(&format!("/api/v1/jobs/{}/log", slow["id"]))
                .unwrap_or_default();
            Ok((log.contains("tick 2\n")).then_some((detail.clone(), jobs)))
        },
    )?;
    let eval_id = detail["id"].as_i64().context("evaluation id")?;
    let id_of = |a: &str| jobs[&format!("{P}{a}")]["id"].as_i64().unwrap_or(-1);
    let (slow_id, broken_id) = (id_of("slow"), id_of("broken"));
    let reached_live = started.elapsed();

    // 1. The live log: lines arrive over the event stream into the same document.
    let live_tab = browser.tab()?;
    let live_url = format!("{base}/jobs/{slow_id}");
    browser.open(&live_tab, &live_url)?;
    browser.eval(&live_tab, "window.__reconixE2e = true")?;
    let first = browser.eval(&live_tab, LIVE_LOG)?;
    ensure!(
        first["state"] == "building" && first["stream"].is_string() && first["status"] == "live",
        "the slow job's page is not a live log: {first}"
    );
    let n0 = ticks_of(&first).len();
    let grown = browser.wait_js(
        &live_tab,
        "three more tick lines streamed into the live log",
        Duration::from_secs(60),
        &format!(
            "(() => {{ const l = {LIVE_LOG}; return l && l.marked && l.ticks.length >= {} ? l : null; }})()",
            n0 + 3
        ),
    )?;
    let ticks = ticks_of(&grown);
    let expected: Vec<u64> = (1..=u64::try_from(ticks.len())?).collect();
    assert_eq!(
        ticks, expected,
        "every line once and in order (page rendered {n0} ticks, the stream added the rest)"
    );
    let shot_live = browser.screenshot(&live_tab, "live-log.png")?;

    // 2. The evaluation: failures first, with their error, in red, and a link to the log.
    let tab = browser.tab()?;
    browser.open(&tab, &format!("{base}/evaluations/{eval_id}"))?;
    let page = browser.eval(
        &tab,
        "(() => {
          const groups = [...document.querySelectorAll('tr.group')].map(g => [g.id, g.innerText.trim()]);
          const first = document.querySelector('tr.group + tr');
          const err = first.querySelector('span.failed');
          const log = [...first.querySelectorAll('a')].find(a => a.innerText === 'log');
          return {
            h1: document.querySelector('h1').innerText,
            badges: [...document.querySelectorAll('dd a.badge')].map(b => b.innerText),
            groups,
            attr: first.querySelector('code').innerText,
            error: err ? err.innerText : null,
            errorColour: err ? getComputedStyle(err).color : null,
            log: log ? log.getAttribute('href') : null,
            body: document.body.innerText,
          };
        })()",
    )?;
    ensure!(
        page["h1"]
            .as_str()
            .is_some_and(|h| h.starts_with(&format!("Evaluation {eval_id}"))),
        "{page:#}"
    );
    assert_eq!(
        page["groups"][0],
        json!(["failed", "failed (1)"]),
        "{page:#}"
    );
    assert_eq!(page["attr"], format!("{P}broken"), "{page:#}");
    ensure!(
        page["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.drv' failed with exit code 1")),
        "the failing job's error is not shown: {page:#}"
    );
    assert_eq!(page["errorColour"], "rgb(179, 38, 30)", "the error is red");
    assert_eq!(page["log"], format!("/jobs/{broken_id}#log"), "{page:#}");
    for badge in ["1 failed", "1 succeeded"] {
        ensure!(
            page["badges"]
                .as_array()
                .is_some_and(|b| b.contains(&json!(badge))),
            "no `{badge}` badge: {page:#}"
        );
    }
    ensure!(!page["body"].as_str().unwrap_or_default().contains('\u{1b}'));
    let shot_eval = browser.screenshot(&tab, "evaluation.png")?;

    // 3. The failing job's log, reached through that link: the builder's words in its colours,
    // no escape codes.
    browser.open(&tab, &format!("{base}/jobs/{broken_id}#log"))?;
    let job = browser.eval(
        &tab,
        "(() => ({
          h1: document.querySelector('h1').innerText,
          log: document.getElementById('log').innerText,
          coloured: [...document.querySelectorAll('#log span[class^=ansi-]')].map(s => [s.className, s.innerText]),
          red: (s => s && getComputedStyle(s).color)(document.querySelector('#log span.ansi-fg1')),
          error: (document.querySelector('pre.failed') || {}).innerText || null,
        }))()",
    )?;
    assert_eq!(job["h1"], format!("{P}broken failed"), "{job:#}");
    let log = job["log"].as_str().unwrap_or_default();
    ensure!(
        log.contains("compiling broken\n") && log.contains("red error: the widget is on fire\n"),
        "the log does not read as the builder wrote it: {job:#}"
    );
    for junk in ["\u{1b}", "[31m", "[0m"] {
        ensure!(
            !log.contains(junk),
            "raw escape code {junk:?} in the log: {log:?}"
        );
    }
    // The builder's red reached the page as a coloured span, painted red.
    ensure!(
        job["coloured"] == json!([["ansi-fg1", "red error"]]),
        "the builder's colour is not shown: {job:#}"
    );
    ensure!(
        job["red"] == "rgb(224, 108, 117)",
        "the coloured span is not painted red: {job:#}"
    );
    ensure!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("failed with exit code 1")),
        "{job:#}"
    );

    // 4. The overview: the evaluation, the newest evaluation's failing job, the repository.
    browser.open(&tab, &format!("{base}/"))?;
    let overview = browser.eval(
        &tab,
        &format!(
            "(() => {{ {TABLE_AFTER}
              return {{
                evaluations: tableAfter('Evaluations'),
                latest: (document.querySelector('h2 a[href^=\"/evaluations/\"]') || {{}}).innerText || null,
                latestJobs: tableAfter('Latest evaluation'),
                repos: [...document.querySelectorAll('h2 + ul li')].map(l => l.innerText),
              }};
            }})()"
        ),
    )?;
    let evaluations = texts(&overview["evaluations"]);
    let short_rev = &rev[..12];
    ensure!(
        evaluations.iter().any(|r| {
            r.first() == Some(&eval_id.to_string())
                && r.get(1).map(String::as_str) == Some("here/demo")
                && r.get(3).map(String::as_str) == Some(short_rev)
                && r.get(5).is_some_and(|c| c.contains("1 failed"))
        }),
        "the overview does not list evaluation {eval_id} of here/demo at {short_rev}: {overview:#}"
    );
    assert_eq!(overview["latest"], format!("#{eval_id}"), "{overview:#}");
    let latest = texts(&overview["latestJobs"]);
    let broken_row = latest.get(1).context("no job in the latest evaluation")?;
    assert_eq!(
        broken_row.first(),
        Some(&format!("{P}broken")),
        "failures first: {overview:#}"
    );
    assert_eq!(
        broken_row.get(1).map(String::as_str),
        Some("failed"),
        "{overview:#}"
    );
    ensure!(
        broken_row
            .get(2)
            .is_some_and(|e| e.contains("failed with exit code 1")),
        "{overview:#}"
    );
    ensure!(
        overview["repos"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("here/demo"))),
        "{overview:#}"
    );
    let shot_overview = browser.screenshot(&tab, "overview.png")?;

    // 5. Cheap checks of the operator endpoints while the build runs.
    d.wait_for("/readyz to answer 200", DEADLINE, |d| {
        Ok(http_get(&format!("{}/readyz", d.url())).ok())
    })?;
    d.wait_for("the failed job in /metrics", DEADLINE, |d| {
        let metrics = d.get_text("/metrics")?;
        Ok(metrics
            .lines()
            .any(|l| l == r#"reconix_jobs{state="failed"} 1"#)
            .then_some(()))
    })?;
    let cancel = format!("{base}/api/v1/evaluations/{eval_id}/cancel");
    let (code, body) = http_request("POST", &cancel, None)?;
    assert_eq!(code, 401, "cancel without a token: {body}");
    ensure!(body.contains("missing bearer token"), "{body}");
    let (code, body) = http_request("POST", &cancel, Some("not-the-token"))?;
    assert_eq!(code, 401, "cancel with a wrong token: {body}");
    let still = d.evaluation_of(&rev)?.context("evaluation gone")?;
    ensure!(
        still["state"] != "cancelled",
        "a refused cancel cancelled: {still}"
    );

    // 6. When the build ends, the live page reloads itself and shows the finished job.
    let done = browser.wait_js(
        &live_tab,
        "the live page to reload with the finished job",
        DEADLINE,
        &format!(
            "(() => {{ const l = {LIVE_LOG}; return l && !l.marked && l.state !== 'building' ? l : null; }})()"
        ),
    )?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        ticks_of(&done),
        (1..=u64::from(TICKS)).collect::<Vec<_>>(),
        "{done}"
    );
    ensure!(
        done["stream"].is_null() && done["status"].is_null(),
        "still live: {done}"
    );
    let finished = d.wait_evaluation(&rev, "finished")?;
    let states: BTreeMap<String, String> = jobs_by_attr(&finished)?
        .into_iter()
        .map(|(a, j)| (a, j["state"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(states[&format!("{P}hello")], "succeeded");

    for shot in [&shot_overview, &shot_eval, &shot_live] {
        let len = std::fs::metadata(shot)?.len();
        ensure!(
            len > 10_000,
            "{} is suspiciously small ({len} bytes)",
            shot.display()
        );
    }
    eprintln!(
        "browser test: live log reached after {reached_live:?}, total {:?}",
        started.elapsed()
    );
    Ok(())
}
