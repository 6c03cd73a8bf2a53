//! Cron schedules as Kubernetes reads them (robfig/cron's standard parser): five fields
//! (minute, hour, day of month, month, day of week) with `*`, `?`, lists, ranges, steps
//! and month/day names, or the `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight` and `@hourly` macros; when both day fields are restricted either may match.
//! Times are worked out in the schedule's time zone.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("expected exactly 5 fields, found {0}: {1:?}")]
    Fields(usize, String),
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse {field} field {text:?}")]
    Field { field: &'static str, text: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// A day field was `*` or `?`: both day fields must then match.
    day_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, names: &[&str], offset: u32) -> Option<u32> {
    text.parse().ok().or_else(|| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(text))
            .and_then(|i| u32::try_from(i).ok())
            .map(|i| i + offset)
    })
}

/// One field as a bit set; whether it was a star.
fn field(
    text: &str,
    name: &'static str,
    min: u32,
    max: u32,
    names: &[&str],
    offset: u32,
) -> Result<(u64, bool), CronError> {
    let bad = || CronError::Field {
        field: name,
        text: text.to_string(),
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step.parse::<u32>().map_err(|_| bad())?)),
            None => (part, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            star = step.is_none();
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, names, offset).ok_or_else(bad)?,
                value(b, names, offset).ok_or_else(bad)?,
            )
        } else {
            let start = value(range, names, offset).ok_or_else(bad)?;
            // "a/n" runs from a to the end of the field.
            (start, if step.is_some() { max } else { start })
        };
        let step = step.unwrap_or(1);
        // Sunday may be written 7.
        let high = if name == "day of week" && high == 7 { 7 } else { high };
        if step == 0 || low < min || high > max.max(if name == "day of week" { 7 } else { max }) || low > high {
            return Err(bad());
        }
        let mut v = low;
        while v <= high {
            let bit = if name == "day of week" { v % 7 } else { v };
            bits |= 1 << bit;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(CronError::Descriptor(other.to_string())),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::Fields(fields.len(), text.to_string()));
        }
        let (minutes, _) = field(fields[0], "minute", 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], "hour", 0, 23, &[], 0)?;
        let (days, dom_star) = field(fields[2], "day of month", 1, 31, &[], 0)?;
        let (months, _) = field(fields[3], "month", 1, 12, &MONTHS, 1)?;
        let (weekdays, dow_star) = field(fields[4], "day of week", 0, 6, &WEEKDAYS, 0)?;
        Ok(Self {
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_star: dom_star || dow_star,
        })
    }

    fn day_matches(&self, day: &DateTime) -> bool {
        let dom = self.days & (1 << day.day()) != 0;
        let dow = self.weekdays & (1 << day.weekday().to_sunday_zero_offset()) != 0;
        if self.day_star { dom && dow } else { dom || dow }
    }

    /// The first scheduled time strictly after `after`, in `zone`; none within five years.
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(zone.clone()).datetime();
        // The next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while t < limit {
            let month = u32::try_from(t.month()).ok()?;
            if self.months & (1 << month) == 0 {
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            let hour = u32::try_from(t.hour()).ok()?;
            if self.hours & (1 << hour) == 0 {
                t = t.with().minute(0).build().ok()?.checked_add(1.hour()).ok()?;
                continue;
            }
            let minute = u32::try_from(t.minute()).ok()?;
            if self.minutes & (1 << minute) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let zoned: Zoned = zone.to_zoned(t).ok()?;
            let instant = zoned.timestamp();
            // A time skipped by a daylight-saving jump maps later; keep it only if it is
            // still after the given instant.
            if instant > after {
                return Some(instant);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn fields_macros_and_names() {
        let utc = TimeZone::UTC;
        let every = Schedule::parse("*/1 * * * *").unwrap();
        assert_eq!(
            every.next_after(at("2026-01-01T10:00:30Z"), &utc),
            Some(at("2026-01-01T10:01:00Z"))
        );
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(at("2026-01-01T10:00:00Z"), &utc),
            Some(at("2026-01-01T11:00:00Z"))
        );
        let weekdays = Schedule::parse("30 9 * * MON-FRI").unwrap();
        // 2026-01-03 is a Saturday.
        assert_eq!(
            weekdays.next_after(at("2026-01-03T00:00:00Z"), &utc),
            Some(at("2026-01-05T09:30:00Z"))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            yearly.next_after(at("2026-03-01T00:00:00Z"), &utc),
            Some(at("2027-01-01T00:00:00Z"))
        );
        let sunday = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(at("2026-01-01T00:00:00Z"), &utc),
            Some(at("2026-01-04T00:00:00Z"))
        );
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 1st of the month or any Monday.
        let s = Schedule::parse("0 0 1 * MON").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            Some(at("2026-01-05T00:00:00Z"))
        );
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let s = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z"), &berlin),
            Some(at("2026-01-01T08:00:00Z"))
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        assert_eq!(
            Schedule::parse("* * * *").unwrap_err().to_string(),
            "expected exactly 5 fields, found 4: \"* * * *\""
        );
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("@fortnightly").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
    }
}
