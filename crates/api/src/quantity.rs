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

/// The canonical text of a value, as upstream prints quantities: in binary suffixes
/// (`1536Mi`) when asked and the value is a whole number of bytes, else with the largest
/// decimal suffix that leaves an integer (`2k`, `1500`, `500m`).
pub fn format(value: f64, binary: bool) -> String {
    if binary && value.fract() == 0.0 && value.abs() >= 1024.0 {
        let mut n = value;
        let mut suffix = "";
        for next in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
            if (n / 1024.0).fract() != 0.0 {
                break;
            }
            n /= 1024.0;
            suffix = next;
        }
        return format!("{n:.0}{suffix}");
    }
    // In thousandths of nano-units, rounded to integers before choosing a suffix.
    let nanos = (value * 1e9).round();
    if nanos == 0.0 {
        return "0".into();
    }
    for (scale, suffix) in [
        (1e27, "E"),
        (1e24, "P"),
        (1e21, "T"),
        (1e18, "G"),
        (1e15, "M"),
        (1e12, "k"),
        (1e9, ""),
        (1e6, "m"),
        (1e3, "u"),
    ] {
        if (nanos / scale).fract() == 0.0 {
            return format!("{:.0}{suffix}", nanos / scale);
        }
    }
    format!("{nanos:.0}n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text() {
        assert_eq!(format(0.0, false), "0");
        assert_eq!(format(0.5, false), "500m");
        assert_eq!(format(1.5, false), "1500m");
        assert_eq!(format(2.0, false), "2");
        assert_eq!(format(2000.0, false), "2k");
        assert_eq!(format(1500.0, false), "1500");
        assert_eq!(format(1024f64.powi(3), true), "1Gi");
        assert_eq!(format(1.5 * 1024f64.powi(3), true), "1536Mi");
        assert_eq!(format(100.0, true), "100");
        assert_eq!(format(3.0, true), "3");
    }

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
