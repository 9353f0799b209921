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

/// A distribution-free 95 % confidence interval for the median of `xs`:
/// the order statistics `x(k)..x(n+1-k)` with the largest `k` for which
/// `P(Binomial(n, 1/2) < k) <= 2.5 %`. One wild round cannot move it, unlike
/// an interval built on the mean. With fewer than 6 values no such `k`
/// exists and the whole range is returned.
#[must_use]
pub fn median_ci95(xs: &[f64]) -> (f64, f64) {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // P(X <= j) for X ~ Binomial(n, 1/2), summed term by term.
    let mut below = 0.0; // P(X < k)
    let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX)); // P(X = 0)
    let mut k = 0;
    for j in 0..n {
        if below + term > 0.025 {
            break;
        }
        below += term;
        k = j + 1;
        // P(X = j+1) = P(X = j) * (n - j) / (j + 1)
        #[allow(clippy::cast_precision_loss)]
        {
            term *= (n - j) as f64 / (j + 1) as f64;
        }
    }
    if k == 0 {
        return (sorted[0], sorted[n - 1]);
    }
    (sorted[k - 1], sorted[n - k])
}

/// A standard deviation that single wild values cannot inflate: the median
/// absolute deviation, scaled to match the standard deviation of normal data.
#[must_use]
pub fn robust_sd(xs: &[f64]) -> f64 {
    let m = median(xs.to_vec());
    1.4826 * median(xs.iter().map(|x| (x - m).abs()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_interval_uses_the_binomial_order_statistics() {
        let xs: Vec<f64> = (1..=9).map(f64::from).collect();
        // n = 9: P(X <= 1) = 10/512 <= 2.5 %, P(X <= 2) = 46/512 > 2.5 %.
        assert_eq!(median_ci95(&xs), (2.0, 8.0));
        let xs: Vec<f64> = (1..=21).map(f64::from).collect();
        // n = 21: P(X <= 5) = 1.33 %, P(X <= 6) = 3.9 %.
        assert_eq!(median_ci95(&xs), (6.0, 16.0));
        assert_eq!(median_ci95(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }

    #[test]
    fn one_wild_value_moves_neither_the_interval_much_nor_the_robust_sd() {
        let mut xs = vec![1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0];
        let calm = robust_sd(&xs);
        xs[3] = 1.5;
        assert!((robust_sd(&xs) - calm).abs() < 0.01, "{}", robust_sd(&xs));
        let (lo, hi) = median_ci95(&xs);
        assert!(lo >= 0.98 && hi <= 1.02, "{lo}..{hi}");
    }
}
