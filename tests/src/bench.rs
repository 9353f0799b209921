//! What the benchmarks (`benches/`) share: reading their settings from the
//! environment, and summarising rounds as medians and per-round ratio ranges.

/// A whole number from the environment variable `name`, or `default`.
#[must_use]
pub fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// A yes/no setting from the environment variable `name`, or `default`.
#[must_use]
pub fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref().map(str::trim) {
        Err(_) | Ok("") => default,
        Ok("1" | "on" | "true" | "yes") => true,
        Ok("0" | "off" | "false" | "no") => false,
        Ok(other) => panic!("{name} must be 1 or 0, not {other:?}"),
    }
}

/// A comma-separated list from the environment variable `name`, if set.
#[must_use]
pub fn env_list(name: &str) -> Option<Vec<String>> {
    let v = std::env::var(name).ok()?;
    Some(
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// The median of `xs` (the upper one of an even count).
#[must_use]
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The smallest and largest of the per-round ratios `xs[i] / ys[i]`.
#[must_use]
pub fn ratio_range(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    xs.iter()
        .zip(ys)
        .map(|(x, y)| x / y)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r), hi.max(r))
        })
}
