//! Resource quantities (`100m`, `64Mi`, `1.5`, `1e3`): upstream's syntax, and their value
//! for comparisons (requests against limits).

/// Upstream's message for a malformed quantity (it rejects them while decoding).
pub const SYNTAX_MESSAGE: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// The quantity's value, or `None` if it is not a quantity.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(split);
    let digits = number.trim_start_matches(['+', '-']);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let exponent = exponent.strip_prefix(['e', 'E'])?;
            let digits = exponent.trim_start_matches(['+', '-']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || exponent.len() - digits.len() > 1 {
                return None;
            }
            10f64.powi(exponent.parse::<i32>().ok()?)
        }
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_syntax() {
        for (text, value) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("1.5", 1.5),
            ("64Mi", 67_108_864.0),
            ("1Gi", 1_073_741_824.0),
            ("2k", 2000.0),
            ("1e3", 1000.0),
            ("5E-1", 0.5),
            ("+3", 3.0),
            ("-1", -1.0),
            ("0.5Ki", 512.0),
        ] {
            assert_eq!(parse(text), Some(value), "{text}");
        }
        for bad in [
            "", "abc", "1.2.3", "10 MB", "1Gb", "m", ".", "1e", "1e+-3", "--1", "1mm",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
