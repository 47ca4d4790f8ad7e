//! Kubernetes `resource.Quantity` strings, byte for byte as Go writes them.
//!
//! prometheus-adapter turns a sample into `resource.NewMilliQuantity(int64(v*1000.0), DecimalSI)` and
//! serialises `Quantity.String()`, so clients see `1500m`, `2k` or `1536Mi`, never `1.5`. This module is
//! hand-written because no Rust crate formats Go-canonical quantities: k8s-openapi's `Quantity` is an
//! opaque string, and SI-prefix formatters pick other suffixes and emit decimal points. The rules come
//! from apimachinery's `quantity.go` and `amount.go`.

/// Why a number has no quantity form, or a string is no quantity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("the value is NaN, which a quantity cannot represent")]
    NotANumber,
    #[error("the value is infinite, which a quantity cannot represent")]
    Infinite,
    #[error("the value {0} is too large for a quantity in milli-units (at most about ±9.2e15)")]
    OutOfRange(f64),
    #[error("invalid quantity {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
    #[error("the quantity {0:?} is too large to count in milli-units (at most about ±9.2e15)")]
    TooLarge(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// 2^63 is the first f64 above `i64::MAX`, which f64 cannot represent.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// Computes Go's `int64(v * 1000.0)`: an IEEE multiply, then truncation toward zero. Go leaves NaN, the
/// infinities and out-of-range values undefined (amd64 yields `math.MinInt64`); they are errors here.
pub fn milli_from_f64(v: f64) -> Result<i64> {
    if v.is_nan() {
        return Err(Error::NotANumber);
    }
    if v.is_infinite() {
        return Err(Error::Infinite);
    }
    let milli = v * 1000.0;
    if !(-TWO_POW_63..TWO_POW_63).contains(&milli) {
        return Err(Error::OutOfRange(v));
    }
    // Within range, `as` truncates toward zero exactly as Go's conversion does.
    Ok(milli as i64)
}

/// The DecimalSI string Go writes for `NewMilliQuantity(milli, DecimalSI)`.
pub fn format_milli(milli: i64) -> String {
    if milli == 0 {
        return "0".to_owned();
    }
    // Go strips factors of ten from the magnitude into the exponent, starting at milli (-3). The
    // magnitude is a u128 so that i64::MIN needs no special case.
    let mut mantissa = i128::from(milli).unsigned_abs();
    let mut exponent: i32 = -3;
    while mantissa % 10 == 0 {
        mantissa /= 10;
        exponent += 1;
    }
    // Then it lowers the exponent to a multiple of three, moving digits back into the mantissa.
    let (mantissa, exponent) = match exponent.rem_euclid(3) {
        1 => (mantissa * 10, exponent - 1),
        2 => (mantissa * 100, exponent - 2),
        _ => (mantissa, exponent),
    };
    let sign = if milli < 0 { "-" } else { "" };
    format!("{sign}{mantissa}{}", decimal_suffix(exponent))
}

fn decimal_suffix(exponent: i32) -> String {
    let suffix = match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        // Go falls back to an exponent beyond the SI suffixes; an i64 of milli-units never gets here.
        _ => return format!("e{exponent}"),
    };
    suffix.to_owned()
}

/// Formats `v` as prometheus-adapter does: `format_milli(milli_from_f64(v)?)`.
pub fn from_f64(v: f64) -> Result<String> {
    milli_from_f64(v).map(format_milli)
}

/// The BinarySI string Go writes for `NewMilliQuantity(milli, BinarySI)` (memory in bytes).
///
/// Magnitudes below 1024 and fractional values fall back to DecimalSI; whole values take the largest
/// power-of-1024 suffix that divides them exactly.
pub fn format_binary_milli(milli: i64) -> String {
    if milli.unsigned_abs() < 1_024_000 || milli % 1000 != 0 {
        return format_milli(milli);
    }
    let whole = milli / 1000;
    let mut mantissa = whole.unsigned_abs();
    let mut power = 0;
    while power < 6 && mantissa.is_multiple_of(1024) {
        mantissa /= 1024;
        power += 1;
    }
    let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
    let sign = if whole < 0 { "-" } else { "" };
    format!("{sign}{mantissa}{suffix}")
}

/// Parses a quantity string (`1.5`, `250m`, `2Ki`, `1e3`, `-0.5`) into milli-units the way Go's
/// `ParseQuantity(s).MilliValue()` does: a value with a finer fraction rounds away from zero, so
/// `0.0001` is 1 and `-0.0001` is -1. Unlike Go, a lone sign or `.` is refused rather than read as
/// zero, and a value beyond the i64 range is an error rather than an overflow.
pub fn parse_milli(s: &str) -> Result<i64> {
    let invalid = |reason| Error::Invalid {
        input: s.to_owned(),
        reason,
    };
    let (negative, unsigned) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, s),
    };
    let digits_in = |text: &str| text.bytes().take_while(u8::is_ascii_digit).count();
    let (whole, rest) = unsigned.split_at(digits_in(unsigned));
    let (fraction, suffix) = match rest.strip_prefix('.') {
        Some(after_point) => after_point.split_at(digits_in(after_point)),
        None => ("", rest),
    };
    if whole.is_empty() && fraction.is_empty() {
        return Err(invalid("expected a number such as 1, 1.5 or .5"));
    }
    let (exponent10, doublings) = parse_suffix(suffix).ok_or_else(|| {
        invalid("expected a suffix among n u m k M G T P E Ki Mi Gi Ti Pi Ei, or e<exponent>")
    })?;

    // The value is digits × 2^doublings × 10^scale in milli-units. Exact decimal digits avoid any
    // overflow before the final range check.
    let mut digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    if digits.is_empty() {
        return Ok(0);
    }
    for _ in 0..doublings {
        double(&mut digits);
    }
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    let scale = exponent10.saturating_add(3).saturating_sub(fraction_len);
    let too_large = || Error::TooLarge(s.to_owned());
    let len = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let magnitude = if scale >= 0 {
        if len.saturating_add(scale) > 19 {
            return Err(too_large());
        }
        digits
            .iter()
            .chain(std::iter::repeat_n(&0, usize::try_from(scale).unwrap_or(0)))
            .fold(0u128, push_digit)
    } else {
        let dropped = usize::try_from(scale.unsigned_abs()).unwrap_or(usize::MAX);
        let kept = digits.len().saturating_sub(dropped);
        if kept > 19 {
            return Err(too_large());
        }
        let (kept, dropped) = digits.split_at(kept);
        let rounded_up = dropped.iter().any(|&d| d != 0);
        kept.iter().fold(0u128, push_digit) + u128::from(rounded_up)
    };
    let magnitude = i128::try_from(magnitude).map_err(|_| too_large())?;
    i64::try_from(if negative { -magnitude } else { magnitude }).map_err(|_| too_large())
}

fn push_digit(acc: u128, digit: &u8) -> u128 {
    acc * 10 + u128::from(*digit)
}

/// Doubles a big-endian vector of decimal digits in place.
fn double(digits: &mut Vec<u8>) {
    let mut carry = 0;
    for digit in digits.iter_mut().rev() {
        let doubled = *digit * 2 + carry;
        *digit = doubled % 10;
        carry = doubled / 10;
    }
    if carry > 0 {
        digits.insert(0, carry);
    }
}

/// Reads a suffix as (power of ten, power of two), or None when Go would refuse it.
fn parse_suffix(suffix: &str) -> Option<(i64, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            // Go's scanner allows one sign and then digits only.
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exponent.parse().ok()?, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_adapter_values() {
        let table: &[(f64, &str)] = &[
            (0.5, "500m"),
            (1.0, "1"),
            (1.5, "1500m"),
            (10.5, "10500m"),
            (0.016, "16m"),
            (999.999, "999999m"),
            (1000.0, "1k"),
            (1500.0, "1500"),
            (2000.0, "2k"),
            (12345.678, "12345678m"),
            (1e6, "1M"),
            (2.5e6, "2500k"),
            (1e15, "1P"),
            (-0.5, "-500m"),
            (-2.0, "-2"),
            (0.0, "0"),
            (-0.0, "0"),
            (1.005, "1004m"),
            (0.0004, "0"),
            (-0.0004, "0"),
            (0.1, "100m"),
            (2e6, "2M"),
            (501.484, "501484m"),
            (1e-3, "1m"),
            (123_000.0, "123k"),
            (9.2e15, "9200T"),
        ];
        for &(v, want) in table {
            assert_eq!(from_f64(v).as_deref(), Ok(want), "{v}");
        }
    }

    #[test]
    fn values_without_a_quantity() {
        assert_eq!(from_f64(f64::NAN), Err(Error::NotANumber));
        assert_eq!(from_f64(f64::INFINITY), Err(Error::Infinite));
        assert_eq!(from_f64(f64::NEG_INFINITY), Err(Error::Infinite));
        assert_eq!(from_f64(1e16), Err(Error::OutOfRange(1e16)));
        assert_eq!(from_f64(-1e16), Err(Error::OutOfRange(-1e16)));
        assert_eq!(from_f64(f64::MAX), Err(Error::OutOfRange(f64::MAX)));
        assert!(Error::NotANumber.to_string().contains("NaN"));
    }

    #[test]
    fn the_i64_bounds() {
        // 2^63 / 1000 is the first value whose milli-units do not fit; -2^63 / 1000 still fits.
        assert_eq!(
            milli_from_f64(TWO_POW_63 / 1000.0),
            Err(Error::OutOfRange(TWO_POW_63 / 1000.0))
        );
        assert_eq!(milli_from_f64(-TWO_POW_63 / 1000.0), Ok(i64::MIN));
        // The multiply rounds this one up to 2^63, so it is out of range too, as it is in Go.
        let v = 9.223372036854775e15;
        assert_eq!(milli_from_f64(v), Err(Error::OutOfRange(v)));
        assert_eq!(
            milli_from_f64(9.223372036854774e15),
            Ok(9_223_372_036_854_773_760)
        );
        assert_eq!(format_milli(i64::MAX), "9223372036854775807m");
        assert_eq!(format_milli(i64::MIN), "-9223372036854775808m");
        assert_eq!(format_milli(-1_000_000_000_000_000_000), "-1P");
        assert_eq!(format_binary_milli(i64::MAX), "9223372036854775807m");
        assert_eq!(format_binary_milli(i64::MIN), "-9223372036854775808m");
    }

    #[test]
    fn memory_values() {
        let table: &[(f64, &str)] = &[
            (1000.0, "1k"),
            (0.5, "500m"),
            (512.0, "512"),
            (3100.5, "3100500m"),
            (1024.0, "1Ki"),
            (1536.0, "1536"),
            (2048.0, "2Ki"),
            (1_610_612_736.0, "1536Mi"),
            (3100.0, "3100"),
            (1023.0, "1023"),
            (-1024.0, "-1Ki"),
            (-512.0, "-512"),
            (1_125_899_906_842_624.0, "1Pi"),
            (0.0, "0"),
        ];
        for &(v, want) in table {
            let milli = milli_from_f64(v).unwrap();
            assert_eq!(format_binary_milli(milli), want, "{v}");
        }
    }

    #[test]
    fn parses_every_form() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("000", 0),
            ("0.000", 0),
            ("1", 1000),
            ("+1", 1000),
            ("-1", -1000),
            ("1.5", 1500),
            (".5", 500),
            ("5.", 5000),
            ("1500m", 1500),
            ("10500m", 10_500),
            ("2k", 2_000_000),
            ("1M", 1_000_000_000),
            ("1G", 1_000_000_000_000),
            ("1T", 1_000_000_000_000_000),
            ("1P", 1_000_000_000_000_000_000),
            ("1Ki", 1_024_000),
            ("1.5Ki", 1_536_000),
            ("0.1Ki", 102_400),
            ("1536Mi", 1_610_612_736_000),
            ("1Gi", 1_073_741_824_000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e+3", 1_000_000),
            ("1e-3", 1),
            ("25e-4", 3),
            ("1n", 1),
            ("1u", 1),
            ("1500u", 2),
            ("0.0001", 1),
            ("-0.0001", -1),
            ("1.0005", 1001),
            ("-1.0005", -1001),
            ("0.0000000000000000000000000001", 1),
            ("1.000000000000000000000000000000000000000000001", 1001),
            ("000000000000000000000000000012", 12_000),
            ("9223372036854775807m", i64::MAX),
            ("-9223372036854775808m", i64::MIN),
            ("1e-1000000000000", 1),
        ];
        for &(input, want) in table {
            assert_eq!(parse_milli(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_what_go_refuses() {
        for input in [
            "", "abc", "1x", "1 k", " 1", "1e", "--1", "+-1", "1ki", "1K", "1e3.5", "1ee3", "1Kii", "1.5.5",
            "0x10",
        ] {
            assert!(
                matches!(parse_milli(input), Err(Error::Invalid { .. })),
                "{input:?}"
            );
        }
        for input in ["-", "+", ".", "-."] {
            assert!(
                matches!(parse_milli(input), Err(Error::Invalid { .. })),
                "{input:?}"
            );
        }
        for input in [
            "9223372036854775808m",
            "-9223372036854775809m",
            "1E",
            "8Ei",
            "1e16",
            "100000000000000000000000",
            "1e1000",
        ] {
            assert_eq!(
                parse_milli(input),
                Err(Error::TooLarge(input.to_owned())),
                "{input:?}"
            );
        }
        let message = parse_milli("1x").unwrap_err().to_string();
        assert!(
            message.contains("\"1x\"") && message.contains("suffix"),
            "{message}"
        );
    }

    #[test]
    fn round_trips() {
        let samples = [
            0,
            1,
            -1,
            999,
            1000,
            1500,
            -1500,
            16,
            1_000_000,
            2_500_000_000,
            1_024_000,
            1_536_000,
            1_610_612_736_000,
            3_100_500,
            123_456_789_012,
            1_000_000_000_000_000_000,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ];
        for milli in samples {
            assert_eq!(parse_milli(&format_milli(milli)), Ok(milli), "decimal {milli}");
            assert_eq!(
                parse_milli(&format_binary_milli(milli)),
                Ok(milli),
                "binary {milli}"
            );
        }
        for v in [0.5, 1.005, 12345.678, 501.484, -2.0, 2.5e6, 1e15] {
            let milli = milli_from_f64(v).unwrap();
            assert_eq!(parse_milli(&from_f64(v).unwrap()), Ok(milli), "{v}");
        }
    }
}
