//! Business hours: a time zone, weekly opening windows and holidays.
//!
//! Written the same way wherever a schedule appears (the rules' named
//! `[hours.<name>]`, associates' working hours in the roster):
//!
//! ```toml
//! timezone = "Europe/Berlin"
//! open = ["mon-fri 08:00-18:00", "sat 09:00-12:00 13:00-16:00"]
//! holidays = ["12-25", "12-26", "2027-03-26"]
//! ```
//!
//! * `open`: each entry is days, then one or more `HH:MM-HH:MM` ranges in
//!   local time. Days are `mon`…`sun`, a range `mon-fri` (may wrap:
//!   `fri-mon`), a list `mon,wed,fri`, or `daily`. `24:00` ends a day; a
//!   range ending before it starts runs past midnight (`fri 22:00-06:00` is
//!   Friday night until Saturday 06:00).
//! * `holidays`: `YYYY-MM-DD` for one date, `MM-DD` for every year. A
//!   holiday closes the whole local day.
//!
//! [`ScheduleSpec`] is the serde form; [`ScheduleSpec::compile`] (or
//! [`Schedule::new`]) validates it into a [`Schedule`], whose
//! [`Schedule::is_open`] answers for any instant.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

/// A schedule as written in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Weekly windows, e.g. `mon-fri 08:00-18:00`.
    pub open: Vec<String>,
    /// Closed days: `YYYY-MM-DD` or `MM-DD` (every year).
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// One thing wrong with a schedule: the key within the schedule's table
/// (`timezone`, `open[1]`, `holidays[0]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ScheduleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl ScheduleSpec {
    /// Validates into a [`Schedule`]; every problem is reported.
    pub fn compile(&self) -> Result<Schedule, Vec<ScheduleProblem>> {
        Schedule::new(&self.timezone, &self.open, &self.holidays)
    }
}

/// Minutes since local midnight, 0..=1440.
type Minute = u16;

/// One weekly window: on `days`, from `start` to `end` (local minutes).
/// `end <= start` means the window runs past midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `n` set: open on the day `Weekday::num_days_from_monday() == n`.
    days: u8,
    start: Minute,
    end: Minute,
}

/// A closed day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holiday {
    Date(NaiveDate),
    /// Month and day, every year.
    Yearly(u32, u32),
}

impl Holiday {
    fn covers(self, date: NaiveDate) -> bool {
        match self {
            Holiday::Date(d) => d == date,
            Holiday::Yearly(m, d) => date.month() == m && date.day() == d,
        }
    }
}

impl FromStr for Holiday {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(Holiday::Date(date));
        }
        let yearly = s.split_once('-').and_then(|(m, d)| {
            let (m, d) = (m.parse::<u32>().ok()?, d.parse::<u32>().ok()?);
            // 2024 is a leap year, so 02-29 is accepted.
            NaiveDate::from_ymd_opt(2024, m, d).map(|_| Holiday::Yearly(m, d))
        });
        yearly.ok_or_else(|| {
            format!("`{s}` is not a date: expected `YYYY-MM-DD`, or `MM-DD` for every year")
        })
    }
}

/// Compiled business hours. Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    tz: Tz,
    windows: Vec<Window>,
    holidays: Vec<Holiday>,
}

impl Schedule {
    /// Validates a time zone, windows and holidays; every problem is reported.
    pub fn new(
        timezone: &str,
        open: &[String],
        holidays: &[String],
    ) -> Result<Schedule, Vec<ScheduleProblem>> {
        let mut problems = Vec::new();
        let tz = match timezone.trim().parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push(ScheduleProblem {
                    key: "timezone".into(),
                    message: format!(
                        "unknown time zone `{timezone}`: expected an IANA name such as `Europe/Berlin`"
                    ),
                });
                None
            }
        };
        if open.is_empty() {
            problems.push(ScheduleProblem {
                key: "open".into(),
                message: "give at least one window, e.g. `mon-fri 08:00-18:00`".into(),
            });
        }
        let mut windows = Vec::new();
        for (i, text) in open.iter().enumerate() {
            match parse_windows(text) {
                Ok(mut w) => windows.append(&mut w),
                Err(message) => problems.push(ScheduleProblem {
                    key: format!("open[{i}]"),
                    message,
                }),
            }
        }
        let mut closed = Vec::new();
        for (i, text) in holidays.iter().enumerate() {
            match text.parse::<Holiday>() {
                Ok(h) => closed.push(h),
                Err(message) => problems.push(ScheduleProblem {
                    key: format!("holidays[{i}]"),
                    message,
                }),
            }
        }
        match tz {
            Some(tz) if problems.is_empty() => Ok(Schedule {
                tz,
                windows,
                holidays: closed,
            }),
            _ => Err(problems),
        }
    }

    /// The schedule's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Whether `at` falls inside an opening window, in the schedule's time
    /// zone, on a day that is not a holiday.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz);
        let date = local.date_naive();
        if self.holidays.iter().any(|h| h.covers(date)) {
            return false;
        }
        let day = local.weekday().num_days_from_monday() as u8;
        let yesterday = (day + 6) % 7;
        let minute = (local.hour() * 60 + local.minute()) as Minute;
        self.windows.iter().any(|w| {
            let today = w.days & (1 << day) != 0;
            if w.start < w.end {
                today && (w.start..w.end).contains(&minute)
            } else {
                // Past midnight: the evening part today, the morning part
                // belongs to yesterday's window.
                (today && minute >= w.start) || (w.days & (1 << yesterday) != 0 && minute < w.end)
            }
        })
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_day(s: &str) -> Result<u8, String> {
    let lower = s.to_ascii_lowercase();
    let short = lower.get(..3).unwrap_or(&lower);
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    DAYS.iter()
        .position(|d| *d == short)
        .filter(|&i| lower == DAYS[i] || lower == full[i])
        .map(|i| i as u8)
        .ok_or_else(|| format!("unknown day `{s}`: expected mon, tue, wed, thu, fri, sat or sun"))
}

/// `mon-fri`, `sat`, `mon,wed,fri`, `fri-mon`, `daily` → a day bit set.
fn parse_days(s: &str) -> Result<u8, String> {
    if s.eq_ignore_ascii_case("daily") {
        return Ok(0x7f);
    }
    let mut bits = 0u8;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_day(from)?, parse_day(to)?);
                let mut d = from;
                loop {
                    bits |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => bits |= 1 << parse_day(part)?,
        }
    }
    if bits == 0 {
        return Err(format!("`{s}` names no day"));
    }
    Ok(bits)
}

fn parse_time(s: &str) -> Result<Minute, String> {
    if s == "24:00" {
        return Ok(24 * 60);
    }
    let t = NaiveTime::parse_from_str(s, "%H:%M")
        .map_err(|_| format!("`{s}` is not a time: expected `HH:MM` (00:00 to 24:00)"))?;
    Ok((t.hour() * 60 + t.minute()) as Minute)
}

/// One `open` entry: days, then one or more ranges.
fn parse_windows(text: &str) -> Result<Vec<Window>, String> {
    let mut tokens = text
        .split(|c: char| c.is_whitespace() || c == ';')
        .map(|t| t.trim_matches(','))
        .filter(|t| !t.is_empty());
    let usage = || format!("`{text}`: expected days and times, e.g. `mon-fri 08:00-18:00`");
    let days = parse_days(tokens.next().ok_or_else(usage)?)?;
    let mut windows = Vec::new();
    for range in tokens {
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("`{range}` is not a time range: expected `HH:MM-HH:MM`"))?;
        let (start, end) = (parse_time(start)?, parse_time(end)?);
        if start == end || start == 24 * 60 {
            return Err(format!("`{range}` is an empty time range"));
        }
        windows.push(Window { days, start, end });
    }
    if windows.is_empty() {
        return Err(usage());
    }
    Ok(windows)
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.tz.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn berlin(open: &[&str], holidays: &[&str]) -> Schedule {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Schedule::new("Europe/Berlin", &s(open), &s(holidays)).unwrap()
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn weekday_windows_in_local_time() {
        let s = berlin(&["mon-fri 08:00-18:00"], &[]);
        // Friday 27 Nov 2026, CET = UTC+1.
        assert!(!s.is_open(utc(2026, 11, 27, 6, 59)));
        assert!(s.is_open(utc(2026, 11, 27, 7, 0)));
        assert!(s.is_open(utc(2026, 11, 27, 16, 59)));
        assert!(!s.is_open(utc(2026, 11, 27, 17, 0)));
        // Saturday.
        assert!(!s.is_open(utc(2026, 11, 28, 10, 0)));
        // Summer time (CEST = UTC+2): 08:00 local is 06:00 UTC.
        assert!(s.is_open(utc(2026, 7, 1, 6, 0)));
        assert!(!s.is_open(utc(2026, 7, 1, 5, 59)));
    }

    #[test]
    fn summer_time_changes_follow_the_zone() {
        let s = berlin(&["daily 02:00-03:00"], &[]);
        // 29 Mar 2026: clocks jump from 02:00 to 03:00, the window never occurs.
        assert!(!s.is_open(utc(2026, 3, 29, 0, 59)));
        assert!(!s.is_open(utc(2026, 3, 29, 1, 0)));
        // 25 Oct 2026: 02:00-03:00 happens twice, both are open.
        assert!(s.is_open(utc(2026, 10, 25, 0, 30)));
        assert!(s.is_open(utc(2026, 10, 25, 1, 30)));
        assert!(!s.is_open(utc(2026, 10, 25, 2, 0)));
    }

    #[test]
    fn holidays_close_the_whole_day() {
        let s = berlin(&["daily 00:00-24:00"], &["12-25", "2026-12-31"]);
        assert!(s.is_open(utc(2026, 12, 24, 12, 0)));
        assert!(!s.is_open(utc(2026, 12, 25, 12, 0)));
        assert!(!s.is_open(utc(2027, 12, 25, 12, 0)));
        // 23:30 UTC on the 24th is already the 25th in Berlin.
        assert!(!s.is_open(utc(2026, 12, 24, 23, 30)));
        assert!(!s.is_open(utc(2026, 12, 31, 9, 0)));
        assert!(s.is_open(utc(2027, 12, 31, 9, 0)));
    }

    #[test]
    fn overnight_lists_wraps_and_several_ranges() {
        let s = berlin(&["fri 22:00-06:00"], &[]);
        assert!(s.is_open(utc(2026, 11, 27, 21, 30))); // Fri 22:30
        assert!(s.is_open(utc(2026, 11, 28, 4, 0))); // Sat 05:00
        assert!(!s.is_open(utc(2026, 11, 28, 5, 0))); // Sat 06:00
        assert!(!s.is_open(utc(2026, 11, 26, 4, 0))); // Thu 05:00
        let s = berlin(
            &["sat-mon 09:00-12:00 13:00-16:00", "wed,thu 10:00-11:00"],
            &[],
        );
        assert!(s.is_open(utc(2026, 11, 29, 8, 30))); // Sun 09:30
        assert!(!s.is_open(utc(2026, 11, 29, 11, 30))); // Sun 12:30
        assert!(s.is_open(utc(2026, 11, 30, 14, 0))); // Mon 15:00
        assert!(!s.is_open(utc(2026, 12, 1, 9, 30))); // Tue 10:30
        assert!(s.is_open(utc(2026, 12, 2, 9, 30))); // Wed 10:30
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let v = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let problems = Schedule::new(
            "Europe/Berlinn",
            &v(&["mon-fry 08:00-18:00", "mon 8-18", "tue", "wed 10:00-10:00"]),
            &v(&["2026-02-30", "xmas"]),
        )
        .unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "timezone",
                "open[0]",
                "open[1]",
                "open[2]",
                "open[3]",
                "holidays[0]",
                "holidays[1]"
            ]
        );
        assert!(problems[0].message.contains("Europe/Berlinn"));
        assert!(
            problems[1].message.contains("fry"),
            "{}",
            problems[1].message
        );
        assert!(Schedule::new("UTC", &[], &[]).is_err());
    }

    #[test]
    fn spec_deserializes_and_compiles() {
        let spec: ScheduleSpec = toml::from_str(
            "timezone = \"America/New_York\"\nopen = [\"monday-friday 09:00-17:00\"]\n",
        )
        .unwrap();
        let s = spec.compile().unwrap();
        assert_eq!(s.timezone(), chrono_tz::America::New_York);
        assert!(s.is_open(utc(2026, 11, 27, 15, 0))); // Fri 10:00 EST
        assert!(toml::from_str::<ScheduleSpec>("timezone = \"UTC\"\nopen = []\nx = 1").is_err());
    }
}
