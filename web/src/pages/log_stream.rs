//! `/jobs/{id}/log/stream`: the growth of a job's build log as server-sent events.
//!
//! The handler polls: every [`POLL`] it reads the job's state and the log file past the offset
//! already sent. New complete lines go out as `event: log` (HTML from [`AnsiHtml`], the event
//! id being the byte offset reached); once the job is terminal the rest of the file follows
//! and `event: end` closes the stream. Polling costs one small query per interval and viewer,
//! and needs no hook in the builds loop. A stream lasts at most [`DEADLINE`]; the browser then
//! reconnects with `Last-Event-ID`, which resumes at that offset.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use reconix_status::JobId;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;

use super::PageError;
use super::ansi::AnsiHtml;
use crate::AppState;

/// How much of a log the job page renders: its last 4 MiB.
pub(super) const LOG_PAGE_LIMIT: u64 = 4 << 20;
/// How often the stream looks for growth.
const POLL: Duration = Duration::from_millis(500);
/// How much one event carries at most; a larger backlog goes out in several events.
const CHUNK: u64 = 256 << 10;
/// How long one stream lasts before the browser has to reconnect.
const DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Bytes read from the end of a log.
#[derive(Debug)]
pub(super) struct Tail {
    /// The text, starting at a line boundary when cut.
    pub(super) bytes: Vec<u8>,
    /// The file offset just past `bytes`.
    pub(super) end: u64,
    /// True when the start of the file was left out.
    pub(super) truncated: bool,
}

/// Reads at most `limit` bytes from the end of the log at `path`, starting at a line; with
/// `whole_lines`, an unfinished last line is left for the stream. `None` when there is no file.
///
/// # Errors
/// Returns the I/O error of opening or reading the file.
pub(super) async fn read_tail(
    path: &FsPath,
    limit: u64,
    whole_lines: bool,
) -> std::io::Result<Option<Tail>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    let start = len.saturating_sub(limit);
    file.seek(SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).await?;
    let end = start + u64::try_from(bytes.len()).unwrap_or(0);
    let mut end_cut = bytes.len();
    if whole_lines {
        end_cut = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    }
    let begin = if start > 0 {
        bytes[..end_cut]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(end_cut, |i| i + 1)
    } else {
        0
    };
    let kept = end - u64::try_from(bytes.len() - end_cut).unwrap_or(0);
    bytes.truncate(end_cut);
    bytes.drain(..begin);
    Ok(Some(Tail {
        bytes,
        end: kept,
        truncated: start > 0,
    }))
}

/// Reads up to `max` bytes of the log at `path` from `offset`; with `whole_lines`, or when
/// `max` bytes were read, stops after the last complete line (unless a single line fills
/// `max`), so a chunk never ends inside a line or a UTF-8 character that continues. `None` when
/// there is no file.
async fn read_from(
    path: &FsPath,
    offset: u64,
    max: u64,
    whole_lines: bool,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata().await?.len() <= offset {
        return Ok(Some(Vec::new()));
    }
    file.seek(SeekFrom::Start(offset)).await?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).await?;
    let full = u64::try_from(bytes.len()).is_ok_and(|n| n >= max);
    if whole_lines || full {
        match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => bytes.truncate(i + 1),
            // One line longer than `max` goes out in pieces.
            None if full => {}
            None => bytes.clear(),
        }
    }
    Ok(Some(bytes))
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamQuery {
    /// The byte offset to start at (the end of what the page already shows).
    offset: Option<u64>,
}

/// The state of one stream between events.
#[derive(Debug)]
struct Follow {
    st: AppState,
    id: JobId,
    offset: u64,
    ansi: AnsiHtml,
    deadline: Instant,
    /// Whether to wait [`POLL`] before looking again (not after sending a backlog chunk).
    wait: bool,
    done: bool,
}

pub(super) async fn stream(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let id = JobId(id);
    if st.status.call(move |db| db.job(id)).await?.is_none() {
        return Err(PageError::NotFound("job"));
    }
    // A reconnecting browser says where it got to; that wins over the page's offset.
    let offset = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(q.offset)
        .unwrap_or(0);
    let follow = Follow {
        st,
        id,
        offset,
        ansi: AnsiHtml::new(),
        deadline: Instant::now() + DEADLINE,
        wait: false,
        done: false,
    };
    let events = stream::unfold(follow, next).map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Returns whether job `id` is terminal and where its log is; `None` when the job is gone.
async fn lookup(
    st: &AppState,
    id: JobId,
) -> reconix_status::Result<Option<(bool, Option<PathBuf>)>> {
    st.status
        .call(move |db| {
            let Some(job) = db.job(id)? else {
                return Ok(None);
            };
            let log = match &job.drv_path {
                Some(drv) => db.build_by_drv(drv)?.and_then(|b| b.log_path),
                None => None,
            };
            Ok(Some((job.state.is_terminal(), log)))
        })
        .await
}

/// Waits for and returns the stream's next event.
async fn next(mut f: Follow) -> Option<(Event, Follow)> {
    if f.done {
        return None;
    }
    loop {
        if f.wait {
            tokio::time::sleep(POLL).await;
        }
        f.wait = true;
        if Instant::now() >= f.deadline {
            return None;
        }
        // The state is read before the file: once terminal, the log is complete, so reading
        // it afterwards cannot miss a last line.
        let (terminal, path) = match lookup(&f.st, f.id).await {
            Ok(Some(found)) => found,
            Ok(None) => (true, None),
            Err(err) => {
                tracing::warn!(job = %f.id, error = %err, "log stream cannot read the job");
                return None;
            }
        };
        let chunk = match &path {
            Some(path) => match read_from(path, f.offset, CHUNK, !terminal).await {
                Ok(chunk) => chunk.unwrap_or_default(),
                Err(err) => {
                    tracing::warn!(job = %f.id, error = %err, "log stream cannot read the log");
                    return None;
                }
            },
            None => Vec::new(),
        };
        if !chunk.is_empty() {
            f.offset += u64::try_from(chunk.len()).unwrap_or(0);
            // More may be waiting (a backlog, or the rest before `end`): look again at once.
            f.wait = false;
            let mut html = String::new();
            f.ansi.push(&String::from_utf8_lossy(&chunk), &mut html);
            if html.is_empty() {
                continue;
            }
            let event = Event::default()
                .event("log")
                .id(f.offset.to_string())
                .data(html);
            return Some((event, f));
        }
        if terminal {
            f.done = true;
            return Some((Event::default().event("end").data("end"), f));
        }
    }
}
