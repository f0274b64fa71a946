//! Whether each forge may be called (`forge_health`).

use reconix_spec::names::{ForgeName, Timestamp};
use rusqlite::params;
use serde::Serialize;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, parse};

/// Whether a forge may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgeHealthState {
    /// Calls go through.
    Ok,
    /// The forge rejected the token (401): no calls but the permission probe until it works.
    Paused,
    /// Rate limited until `until`.
    RateLimited,
}

impl ForgeHealthState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Paused => "paused",
            Self::RateLimited => "rate-limited",
        }
    }
}

impl std::str::FromStr for ForgeHealthState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ok" => Ok(Self::Ok),
            "paused" => Ok(Self::Paused),
            "rate-limited" => Ok(Self::RateLimited),
            other => Err(format!("unknown forge health `{other}`")),
        }
    }
}

/// A forge's health row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForgeHealth {
    /// The forge's name in the spec.
    pub forge: String,
    /// Its state.
    pub state: ForgeHealthState,
    /// Why it is not ok.
    pub reason: Option<String>,
    /// Since when it is in this state.
    pub since: Timestamp,
    /// For `rate-limited`: when calls may resume.
    pub until: Option<Timestamp>,
}

impl ForgeHealth {
    /// Returns true when calls may be made at `now` (ok, or a rate limit that has passed).
    pub fn allows_calls(&self, now: Timestamp) -> bool {
        match self.state {
            ForgeHealthState::Ok => true,
            ForgeHealthState::Paused => false,
            ForgeHealthState::RateLimited => self.until.is_none_or(|until| now >= until),
        }
    }
}

impl StatusDb {
    /// Records a forge's health; moving to `ok` clears the reason and `until`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn set_forge_health(
        &mut self,
        forge: &ForgeName,
        state: ForgeHealthState,
        reason: Option<&str>,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO forge_health (forge, state, reason, since, until) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (forge) DO UPDATE SET \
                 since = CASE WHEN state = excluded.state THEN since ELSE excluded.since END, \
                 state = excluded.state, reason = excluded.reason, until = excluded.until",
            )
            .and_then(|mut s| {
                s.execute(params![
                    forge.as_str(),
                    state.as_str(),
                    reason,
                    now.0,
                    until.map(|t| t.0)
                ])
            })
            .op("set_forge_health")?;
        Ok(())
    }

    /// Returns the health of every forge that has a row, by name.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for an
    /// unknown state.
    pub fn forge_healths(&self) -> Result<Vec<ForgeHealth>> {
        const OP: &str = "forge_healths";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT forge, state, reason, since, until FROM forge_health ORDER BY forge",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push(ForgeHealth {
                forge: get(row, 0, OP)?,
                state: parse("forge_health", "state", get(row, 1, OP)?)?,
                reason: get(row, 2, OP)?,
                since: Timestamp(get(row, 3, OP)?),
                until: get::<Option<i64>>(row, 4, OP)?.map(Timestamp),
            });
        }
        Ok(out)
    }

    /// Returns one forge's health; a forge without a row is ok.
    ///
    /// # Errors
    /// As [`StatusDb::forge_healths`].
    pub fn forge_health(&self, forge: &ForgeName) -> Result<Option<ForgeHealth>> {
        Ok(self
            .forge_healths()?
            .into_iter()
            .find(|h| h.forge == forge.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at};

    #[test]
    fn forge_health_should_keep_since_while_the_state_holds() {
        let mut db = StatusDb::open_memory().unwrap();
        let gh = ForgeName::new("gh").unwrap();
        assert_eq!(db.forge_health(&gh).unwrap(), None);
        db.set_forge_health(&gh, ForgeHealthState::Paused, Some("401"), None, T0)
            .unwrap();
        db.set_forge_health(
            &gh,
            ForgeHealthState::Paused,
            Some("401 again"),
            None,
            at(9),
        )
        .unwrap();
        let h = db.forge_health(&gh).unwrap().unwrap();
        assert_eq!((h.state, h.since), (ForgeHealthState::Paused, T0));
        assert!(!h.allows_calls(at(10)));
        db.set_forge_health(
            &gh,
            ForgeHealthState::RateLimited,
            None,
            Some(at(100)),
            at(10),
        )
        .unwrap();
        let h = db.forge_health(&gh).unwrap().unwrap();
        assert!(!h.allows_calls(at(99)));
        assert!(h.allows_calls(at(100)));
        assert_eq!(h.since, at(10));
    }
}
