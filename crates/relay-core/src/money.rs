//! Money: amounts as exact decimals (never `f64` arithmetic) and ISO 4217 currency codes.

use std::str::FromStr;

use iso_currency::Currency;
use rust_decimal::Decimal;
use serde::Serializer;
use serde_json::{Number, Value};

/// Parses a JSON number or numeric string into an exact decimal.
///
/// JSON numbers keep the digits the client wrote (`serde_json` runs with `arbitrary_precision`),
/// so `123.45` is exactly 123.45.
pub fn parse_amount(value: &Value) -> Result<Decimal, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        other => return Err(format!("must be a number, got {}", json_type(other))),
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| format!("{text:?} is not a decimal number"))
}

/// Parses an ISO 4217 alphabetic code, in any letter case, into its canonical upper-case form.
pub fn parse_currency(code: &str) -> Result<Currency, String> {
    let upper = code.trim().to_ascii_uppercase();
    Currency::from_code(&upper)
        .ok_or_else(|| format!("{code:?} is not an ISO 4217 currency code (e.g. USD, BRL, EUR)"))
}

/// Serialises a decimal as a plain JSON number with no trailing zeros (`123.00` → `123`).
pub fn serialize_amount<S: Serializer>(amount: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&amount_to_number(*amount), serializer)
}

/// `serialize_amount` for optional fields.
pub fn serialize_opt_amount<S: Serializer>(
    amount: &Option<Decimal>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match amount {
        Some(a) => serialize_amount(a, serializer),
        None => serializer.serialize_none(),
    }
}

/// The JSON number for an amount, exact to the last digit.
pub fn amount_to_number(amount: Decimal) -> Number {
    // A normalised Decimal prints as plain digits, which is always a valid JSON number.
    Number::from_str(&amount.normalize().to_string()).expect("a decimal prints as a JSON number")
}

/// A short name of a JSON value's type, for error messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn amounts_keep_every_digit_the_client_wrote() {
        let v: Value = serde_json::from_str("123.45").unwrap();
        assert_eq!(parse_amount(&v).unwrap().to_string(), "123.45");
        let v: Value = serde_json::from_str("0.1").unwrap();
        assert_eq!(parse_amount(&v).unwrap().to_string(), "0.1");
        assert_eq!(parse_amount(&json!("19.90")).unwrap().to_string(), "19.90");
        assert_eq!(parse_amount(&json!("1e3")).unwrap(), Decimal::from(1000));
    }

    #[test]
    fn non_numbers_are_refused_with_the_type() {
        assert!(
            parse_amount(&json!(true))
                .unwrap_err()
                .contains("a boolean")
        );
        assert!(parse_amount(&json!("12,50")).is_err());
    }

    #[test]
    fn amounts_serialise_without_trailing_zeros() {
        let n = amount_to_number(Decimal::from_str("123.00").unwrap());
        assert_eq!(n.to_string(), "123");
        let n = amount_to_number(Decimal::from_str("0.10").unwrap());
        assert_eq!(n.to_string(), "0.1");
    }

    #[test]
    fn currency_codes_are_checked_against_iso_4217() {
        assert_eq!(parse_currency("usd").unwrap().code(), "USD");
        assert_eq!(parse_currency("BRL").unwrap().code(), "BRL");
        assert!(parse_currency("XYZ").is_err());
        assert!(parse_currency("dollars").is_err());
    }
}
