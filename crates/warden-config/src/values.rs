//! Checked scalar values shared by the configuration and the rule files.

use std::time::Duration;

use toml::Spanned;

use crate::diag::Sink;

/// A strict humane duration ("250ms", "30s", "5m", "1h", "2d").
pub fn duration(sink: &mut Sink<'_>, field: &str, v: &Spanned<String>) -> Option<Duration> {
    match humantime::parse_duration(v.get_ref()) {
        Ok(d) => Some(d),
        Err(_) => {
            sink.error(
                v.span(),
                format!(
                    "{field} = {:?} is not a duration; expected a number and a unit, like \"250ms\", \"30s\", \"5m\", \"1h\"",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

/// One of a fixed set of names.
pub fn one_of<T: Copy>(
    sink: &mut Sink<'_>,
    field: &str,
    v: &Spanned<String>,
    options: &[(&str, T)],
) -> Option<T> {
    if let Some((_, t)) = options.iter().find(|(n, _)| *n == v.get_ref()) {
        return Some(*t);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    sink.error(
        v.span(),
        format!(
            "{field} = {:?} is not one of: {}",
            v.get_ref(),
            names.join(", ")
        ),
    );
    None
}

/// A byte size: a whole number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB).
pub fn bytes(sink: &mut Sink<'_>, field: &str, v: &Spanned<String>) -> Option<usize> {
    let s = v.get_ref().trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: Option<u64> = match unit.trim() {
        "" | "B" => Some(1),
        "KiB" => Some(1 << 10),
        "MiB" => Some(1 << 20),
        "GiB" => Some(1 << 30),
        "KB" => Some(1_000),
        "MB" => Some(1_000_000),
        "GB" => Some(1_000_000_000),
        _ => None,
    };
    match (num.parse::<u64>().ok(), mult) {
        (Some(n), Some(m)) => n
            .checked_mul(m)
            .and_then(|b| usize::try_from(b).ok())
            .or_else(|| {
                sink.error(v.span(), format!("{field} = {s:?} is too large"));
                None
            }),
        _ => {
            sink.error(
                v.span(),
                format!("{field} = {s:?} is not a size; expected a whole number and a unit, like \"256MiB\" or \"2GiB\""),
            );
            None
        }
    }
}
