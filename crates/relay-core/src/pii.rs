//! Customer-information (`user_data`) PII: normalisation and SHA-256 hashing as Meta documents
//! them (spec §2.8). Click and scoped ids never pass through here: they are sent unhashed.

use std::{fmt, str::FromStr};

use chrono::NaiveDate;
use rlibphonenumber::{PHONE_NUMBER_UTIL, PhoneNumberFormat, Region};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// The `user_data` keys Meta wants normalised and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PiiField {
    Email,
    Phone,
    FirstName,
    LastName,
    Gender,
    DateOfBirth,
    City,
    State,
    Zip,
    Country,
    ExternalId,
}

impl PiiField {
    pub const ALL: [PiiField; 11] = [
        PiiField::Email,
        PiiField::Phone,
        PiiField::FirstName,
        PiiField::LastName,
        PiiField::Gender,
        PiiField::DateOfBirth,
        PiiField::City,
        PiiField::State,
        PiiField::Zip,
        PiiField::Country,
        PiiField::ExternalId,
    ];

    /// The `user_data` key.
    pub fn key(self) -> &'static str {
        match self {
            PiiField::Email => "em",
            PiiField::Phone => "ph",
            PiiField::FirstName => "fn",
            PiiField::LastName => "ln",
            PiiField::Gender => "ge",
            PiiField::DateOfBirth => "db",
            PiiField::City => "ct",
            PiiField::State => "st",
            PiiField::Zip => "zp",
            PiiField::Country => "country",
            PiiField::ExternalId => "external_id",
        }
    }

    pub fn from_key(key: &str) -> Option<PiiField> {
        PiiField::ALL.into_iter().find(|f| f.key() == key)
    }
}

/// A region (ISO 3166-1 alpha-2, such as BR) whose national numbering plan applies to phone
/// numbers written without a country code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRegion(Region);

impl FromStr for PhoneRegion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let unknown = || format!("{s:?} is not a region code such as US or BR");
        let region = Region::from_code(s.trim()).map_err(|_| unknown())?;
        // Every two letters parse; only regions with a numbering plan are real.
        PHONE_NUMBER_UTIL
            .get_country_code_for_region(region)
            .map(|_| PhoneRegion(region))
            .ok_or_else(unknown)
    }
}

impl fmt::Display for PhoneRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What normalisation needs to know beyond the value itself.
#[derive(Debug, Clone, Copy)]
pub struct PiiContext {
    /// Region assumed for phone numbers written without a country code.
    pub default_phone_region: Option<PhoneRegion>,
    /// Latest year a date of birth may have.
    pub current_year: i32,
}

/// Normalises one value of `field` the way Meta documents, ready to hash.
///
/// The error is a sentence saying why the value cannot be used.
pub fn normalize(field: PiiField, raw: &str, ctx: &PiiContext) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    let normalized = match field {
        PiiField::Email => normalize_email(trimmed)?,
        PiiField::Phone => normalize_phone(trimmed, ctx.default_phone_region)?,
        PiiField::FirstName | PiiField::LastName => normalize_name(trimmed)?,
        PiiField::Gender => normalize_gender(trimmed)?,
        PiiField::DateOfBirth => normalize_date_of_birth(trimmed, ctx.current_year)?,
        PiiField::City => letters_only(trimmed).ok_or("has no letters")?,
        PiiField::State => normalize_state(trimmed)?,
        PiiField::Zip => normalize_zip(trimmed)?,
        PiiField::Country => normalize_country(trimmed)?,
        // Hashing is recommended but no format is imposed: it must only be stable.
        PiiField::ExternalId => trimmed.to_owned(),
    };
    Ok(normalized)
}

/// Lower-case hex SHA-256 of the UTF-8 bytes.
pub fn sha256_hex(normalized: &str) -> String {
    // Into a stack buffer: `hex::encode` builds its String a char at a time.
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(normalized.as_bytes()), &mut hex)
        .expect("64 hex digits fit 32 bytes");
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// True for 64 hex digits: what a SHA-256 digest looks like.
pub fn looks_like_sha256(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn lower_nfc(s: &str) -> String {
    if s.is_ascii() {
        // ASCII is already in NFC: the common case skips the Unicode tables.
        return s.to_ascii_lowercase();
    }
    // Lower-casing can decompose, so compose after it.
    s.to_lowercase().nfc().collect()
}

fn normalize_email(s: &str) -> Result<String, String> {
    let email = lower_nfc(s);
    let (local, domain) = email
        .split_once('@')
        .ok_or("is not an e-mail address (no @)")?;
    let valid = !local.is_empty()
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty());
    if !valid {
        return Err("is not an e-mail address".into());
    }
    Ok(email)
}

/// E.164 digits without `+`, parsed and validated with libphonenumber's metadata.
fn normalize_phone(s: &str, default_region: Option<PhoneRegion>) -> Result<String, String> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return Err("has no digits".into());
    }
    let international = if s.starts_with('+') {
        Some(digits.as_str())
    } else {
        digits.strip_prefix("00")
    };
    if let Some(international) = international {
        return e164_digits(&format!("+{international}"), None).ok_or_else(|| {
            format!("+{international} is not a valid phone number for its country code")
        });
    }
    if let Some(PhoneRegion(region)) = default_region
        && let Some(e164) = e164_digits(&digits, Some(region))
    {
        return Ok(e164);
    }
    // Meta asks for the country code to be included; a number may already carry it.
    if let Some(e164) = e164_digits(&format!("+{digits}"), None) {
        return Ok(e164);
    }
    Err(match default_region {
        Some(region) => format!(
            "is not a valid phone number, neither with a country code nor as a national number of {region}"
        ),
        None => "has no valid country code and no default phone region is configured".into(),
    })
}

/// The E.164 form without `+` of a number valid in its numbering plan.
fn e164_digits(text: &str, region: Option<Region>) -> Option<String> {
    let number = PHONE_NUMBER_UTIL.parse(text, region).ok()?;
    if !number.is_valid() {
        return None;
    }
    let e164 = number.format_as(PhoneNumberFormat::E164);
    Some(e164.strip_prefix('+').unwrap_or(&e164).to_owned())
}

fn normalize_name(s: &str) -> Result<String, String> {
    // Meta: lower case, no punctuation; non-Latin letters are kept as UTF-8.
    let lowered = lower_nfc(s);
    let kept: String = lowered
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    // Composing again: removing a character can bring combining marks together.
    let name: String = kept
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .nfc()
        .collect();
    if name.is_empty() {
        return Err("has no letters".into());
    }
    Ok(name)
}

fn normalize_gender(s: &str) -> Result<String, String> {
    match lower_nfc(s).as_str() {
        "f" | "female" => Ok("f".into()),
        "m" | "male" => Ok("m".into()),
        _ => Err("must be f or m (female or male)".into()),
    }
}

fn normalize_date_of_birth(s: &str, current_year: i32) -> Result<String, String> {
    let parts: Vec<&str> = s.split(['-', '/', '.']).collect();
    let (year, month, day) = match parts.as_slice() {
        [ymd] if ymd.len() == 8 && ymd.bytes().all(|b| b.is_ascii_digit()) => {
            (num(&ymd[0..4])?, num(&ymd[4..6])?, num(&ymd[6..8])?)
        }
        [y, m, d] if y.len() == 4 => (num(y)?, num(m)?, num(d)?),
        // Month/day order is only safe to guess when one part cannot be a month.
        [a, b, y] if y.len() == 4 => {
            let (a, b) = (num(a)?, num(b)?);
            match (a > 12, b > 12) {
                (false, true) => (num(y)?, a, b),
                (true, false) => (num(y)?, b, a),
                _ => {
                    return Err(format!(
                        "{s:?} is ambiguous (day/month order); send YYYYMMDD"
                    ));
                }
            }
        }
        _ => return Err(format!("{s:?} is not a date; send YYYYMMDD")),
    };
    let year = i32::try_from(year).map_err(|_| "has an impossible year".to_string())?;
    if !(1900..=current_year).contains(&year) {
        return Err(format!("year {year} is outside 1900..={current_year}"));
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| format!("{s:?} is not a calendar date"))?;
    Ok(date.format("%Y%m%d").to_string())
}

fn num(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("{s:?} is not a number"))
}

fn letters_only(s: &str) -> Option<String> {
    let kept: String = lower_nfc(s)
        .chars()
        .filter(|c| c.is_alphabetic())
        .nfc()
        .collect();
    (!kept.is_empty()).then_some(kept)
}

fn normalize_state(s: &str) -> Result<String, String> {
    let letters = letters_only(s).ok_or("has no letters")?;
    // US states written out in full become their two-letter ANSI code, as Meta asks.
    Ok(US_STATES
        .iter()
        .find(|(name, _)| *name == letters)
        .map(|(_, code)| (*code).to_owned())
        .unwrap_or(letters))
}

fn normalize_zip(s: &str) -> Result<String, String> {
    let lowered = lower_nfc(s);
    let is_us_zip_plus_four = {
        let b = lowered.as_bytes();
        b.len() == 10
            && b[5] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 5 || c.is_ascii_digit())
    };
    if is_us_zip_plus_four {
        return Ok(lowered[..5].to_owned());
    }
    let zip: String = lowered
        .chars()
        .filter(|c| c.is_alphanumeric())
        .nfc()
        .collect();
    if zip.is_empty() {
        return Err("has no letters or digits".into());
    }
    Ok(zip)
}

fn normalize_country(s: &str) -> Result<String, String> {
    let code = s.trim().to_ascii_uppercase();
    if code.len() == 2 && rust_iso3166::from_alpha2(&code).is_some() {
        Ok(code.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not an ISO 3166-1 alpha-2 country code (e.g. us, br)"
        ))
    }
}

/// Full US state names (letters only, lower case) and their ANSI codes.
const US_STATES: [(&str, &str); 51] = [
    ("alabama", "al"),
    ("alaska", "ak"),
    ("arizona", "az"),
    ("arkansas", "ar"),
    ("california", "ca"),
    ("colorado", "co"),
    ("connecticut", "ct"),
    ("delaware", "de"),
    ("districtofcolumbia", "dc"),
    ("florida", "fl"),
    ("georgia", "ga"),
    ("hawaii", "hi"),
    ("idaho", "id"),
    ("illinois", "il"),
    ("indiana", "in"),
    ("iowa", "ia"),
    ("kansas", "ks"),
    ("kentucky", "ky"),
    ("louisiana", "la"),
    ("maine", "me"),
    ("maryland", "md"),
    ("massachusetts", "ma"),
    ("michigan", "mi"),
    ("minnesota", "mn"),
    ("mississippi", "ms"),
    ("missouri", "mo"),
    ("montana", "mt"),
    ("nebraska", "ne"),
    ("nevada", "nv"),
    ("newhampshire", "nh"),
    ("newjersey", "nj"),
    ("newmexico", "nm"),
    ("newyork", "ny"),
    ("northcarolina", "nc"),
    ("northdakota", "nd"),
    ("ohio", "oh"),
    ("oklahoma", "ok"),
    ("oregon", "or"),
    ("pennsylvania", "pa"),
    ("rhodeisland", "ri"),
    ("southcarolina", "sc"),
    ("southdakota", "sd"),
    ("tennessee", "tn"),
    ("texas", "tx"),
    ("utah", "ut"),
    ("vermont", "vt"),
    ("virginia", "va"),
    ("washington", "wa"),
    ("westvirginia", "wv"),
    ("wisconsin", "wi"),
    ("wyoming", "wy"),
];

/// Keys outside `user_data`'s hashed fields whose values are personal data too (a contact's
/// phone, WhatsApp id or e-mail).
const OTHER_PII_KEYS: [&str; 4] = ["phone", "wa_id", "email", "client_ip_address"];

/// A copy of a submitted event that is safe to keep: every value under a PII key (Meta's
/// `user_data` keys such as `em` and `ph`, and `phone`, `wa_id`, `email`, `client_ip_address`
/// anywhere) is replaced by `"sha256:<hex>"` of the value as sent (trimmed), so a stored
/// refusal shows which field was wrong without holding the data. Values that already look like
/// SHA-256 digests are kept.
pub fn hash_pii_values(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn hash_leaf(v: &Value) -> Value {
        match v {
            Value::String(s) if looks_like_sha256(s.trim()) => v.clone(),
            Value::String(s) => Value::String(format!("sha256:{}", sha256_hex(s.trim()))),
            Value::Number(n) => Value::String(format!("sha256:{}", sha256_hex(&n.to_string()))),
            Value::Array(items) => Value::Array(items.iter().map(hash_leaf).collect()),
            Value::Object(_) => Value::String("(object removed: personal data)".into()),
            other => other.clone(),
        }
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let pii =
                        PiiField::from_key(k).is_some() || OTHER_PII_KEYS.contains(&k.as_str());
                    (
                        k.clone(),
                        if pii {
                            hash_leaf(v)
                        } else {
                            hash_pii_values(v)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(hash_pii_values).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_copies_hold_pii_only_as_hashes() {
        let sent = serde_json::json!({
            "event_name": "Purchase",
            "user_data": {"em": " Buyer@Example.com ", "ph": ["+55 11 91234-5678", 5511912345678u64],
                          "whatsapp_business_account_id": "1029", "fn": {"x": "Ana"}},
            "contact": {"phone": "+5511912345678", "customer_id": "c-1"},
            "custom_data": {"value": 10}
        });
        let kept = super::hash_pii_values(&sent).to_string();
        for secret in ["Buyer@Example.com", "91234", "5511912345678", "Ana"] {
            assert!(!kept.contains(secret), "{secret} in {kept}");
        }
        assert!(
            kept.contains(&super::sha256_hex("Buyer@Example.com")),
            "{kept}"
        );
        assert!(
            kept.contains("\"whatsapp_business_account_id\":\"1029\""),
            "{kept}"
        );
        assert!(kept.contains("\"customer_id\":\"c-1\""), "{kept}");
        assert!(kept.contains("\"value\":10"), "{kept}");
    }

    use proptest::prelude::*;

    use super::*;

    fn ctx(region: Option<PhoneRegion>) -> PiiContext {
        PiiContext {
            default_phone_region: region,
            current_year: 2026,
        }
    }

    fn hashed(field: PiiField, raw: &str, region: Option<PhoneRegion>) -> String {
        sha256_hex(&normalize(field, raw, &ctx(region)).unwrap())
    }

    // The examples of Meta's customer-information-parameters page (spec §2.8).
    #[test]
    fn meta_documented_email_example() {
        assert_eq!(
            normalize(PiiField::Email, "John_Smith@gmail.com", &ctx(None)).unwrap(),
            "john_smith@gmail.com"
        );
        assert_eq!(
            hashed(PiiField::Email, "John_Smith@gmail.com", None),
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
        );
    }

    #[test]
    fn meta_documented_phone_example() {
        let us = Some("US".parse().unwrap());
        assert_eq!(
            normalize(PiiField::Phone, "(650)555-1212", &ctx(us)).unwrap(),
            "16505551212"
        );
        assert_eq!(
            hashed(PiiField::Phone, "(650)555-1212", us),
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
        );
        // The same number written internationally needs no default region.
        assert_eq!(
            hashed(PiiField::Phone, "+1 650 555 1212", None),
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
        );
    }

    #[test]
    fn meta_documented_name_examples() {
        assert_eq!(
            normalize(PiiField::FirstName, "Mary", &ctx(None)).unwrap(),
            "mary"
        );
        assert!(hashed(PiiField::FirstName, "Mary", None).starts_with("6915771be1c5"));
        assert!(hashed(PiiField::FirstName, "Mary", None).ends_with("f4ec"));
        assert_eq!(
            normalize(PiiField::FirstName, "Valéry", &ctx(None)).unwrap(),
            "valéry"
        );
        assert!(hashed(PiiField::FirstName, "Valéry", None).starts_with("08e1996b"));
        assert!(hashed(PiiField::FirstName, "Valéry", None).ends_with("149c"));
        assert!(hashed(PiiField::LastName, "정", None).starts_with("8fa8cd9c"));
        assert!(hashed(PiiField::LastName, "정", None).ends_with("db14"));
    }

    #[test]
    fn removing_punctuation_keeps_the_result_normalised() {
        // Found by the idempotency property: marks brought together must be composed again.
        let c = ctx(None);
        let once = normalize(PiiField::FirstName, "\u{1e08f}¡\u{c55}", &c).unwrap();
        assert_eq!(normalize(PiiField::FirstName, &once, &c).unwrap(), once);
        let city = normalize(PiiField::City, "\u{1e08f}1\u{c55}", &c).unwrap();
        assert_eq!(normalize(PiiField::City, &city, &c).unwrap(), city);
        let zip = normalize(PiiField::Zip, "\u{1e000} \u{6ed}", &c).unwrap();
        assert_eq!(normalize(PiiField::Zip, &zip, &c).unwrap(), zip);
    }

    #[test]
    fn decomposed_accents_hash_like_composed_ones() {
        let decomposed = "Vale\u{301}ry";
        assert_eq!(
            hashed(PiiField::FirstName, decomposed, None),
            hashed(PiiField::FirstName, "Valéry", None)
        );
    }

    #[test]
    fn meta_documented_date_of_birth_example() {
        assert_eq!(
            normalize(PiiField::DateOfBirth, "2/16/1997", &ctx(None)).unwrap(),
            "19970216"
        );
        assert!(hashed(PiiField::DateOfBirth, "2/16/1997", None).starts_with("01acdbf6"));
        assert!(hashed(PiiField::DateOfBirth, "2/16/1997", None).ends_with("0f0c"));
        assert_eq!(
            normalize(PiiField::DateOfBirth, "1997-02-16", &ctx(None)).unwrap(),
            "19970216"
        );
        assert_eq!(
            normalize(PiiField::DateOfBirth, "16.02.1997", &ctx(None)).unwrap(),
            "19970216"
        );
    }

    #[test]
    fn ambiguous_or_impossible_dates_are_refused() {
        assert!(normalize(PiiField::DateOfBirth, "02/03/1997", &ctx(None)).is_err());
        assert!(normalize(PiiField::DateOfBirth, "1899-01-01", &ctx(None)).is_err());
        assert!(normalize(PiiField::DateOfBirth, "2030-01-01", &ctx(None)).is_err());
        assert!(normalize(PiiField::DateOfBirth, "1997-02-30", &ctx(None)).is_err());
    }

    #[test]
    fn meta_documented_country_example() {
        assert_eq!(
            hashed(PiiField::Country, "US", None),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
        assert!(normalize(PiiField::Country, "USA", &ctx(None)).is_err());
        assert!(normalize(PiiField::Country, "zz", &ctx(None)).is_err());
    }

    #[test]
    fn city_state_zip_follow_meta_rules() {
        let c = ctx(None);
        assert_eq!(
            normalize(PiiField::City, "New York", &c).unwrap(),
            "newyork"
        );
        assert_eq!(
            normalize(PiiField::City, "São Paulo", &c).unwrap(),
            "sãopaulo"
        );
        assert_eq!(normalize(PiiField::State, "CA", &c).unwrap(), "ca");
        assert_eq!(normalize(PiiField::State, "California", &c).unwrap(), "ca");
        assert_eq!(normalize(PiiField::State, "New York", &c).unwrap(), "ny");
        assert_eq!(normalize(PiiField::Zip, "94025-1234", &c).unwrap(), "94025");
        assert_eq!(normalize(PiiField::Zip, "M1 1AE", &c).unwrap(), "m11ae");
        assert_eq!(
            normalize(PiiField::Zip, "01310-100", &c).unwrap(),
            "01310100"
        );
        assert_eq!(normalize(PiiField::Gender, "Female", &c).unwrap(), "f");
        assert!(normalize(PiiField::Gender, "x", &c).is_err());
    }

    #[test]
    fn national_phone_numbers_use_the_default_region() {
        let br = Some("BR".parse().unwrap());
        assert_eq!(
            normalize(PiiField::Phone, "(11) 98765-4321", &ctx(br)).unwrap(),
            "5511987654321"
        );
        assert_eq!(
            normalize(PiiField::Phone, "+55 11 98765-4321", &ctx(None)).unwrap(),
            "5511987654321"
        );
        assert_eq!(
            normalize(PiiField::Phone, "0055 11 98765 4321", &ctx(None)).unwrap(),
            "5511987654321"
        );
        // wa_id style: digits with the country code, no plus.
        assert_eq!(
            normalize(PiiField::Phone, "5511987654321", &ctx(None)).unwrap(),
            "5511987654321"
        );
        assert!(normalize(PiiField::Phone, "98765-4321", &ctx(None)).is_err());
        assert!(normalize(PiiField::Phone, "call me", &ctx(br)).is_err());
    }

    #[test]
    fn phone_regions_are_real_iso_codes_in_any_case() {
        assert_eq!("br".parse::<PhoneRegion>().unwrap().to_string(), "BR");
        assert_eq!(" US ".parse::<PhoneRegion>().unwrap().to_string(), "US");
        // Two letters with no numbering plan, and things that are not two letters.
        for bad in ["XX", "BRA", "1", ""] {
            let error = bad.parse::<PhoneRegion>().unwrap_err();
            assert!(error.contains("not a region code"), "{bad}: {error}");
        }
    }

    #[test]
    fn invalid_emails_are_refused_and_unicode_ones_kept() {
        let c = ctx(None);
        assert!(normalize(PiiField::Email, "not-an-email", &c).is_err());
        assert!(normalize(PiiField::Email, "a@b", &c).is_err());
        assert!(normalize(PiiField::Email, "a b@c.com", &c).is_err());
        assert_eq!(
            normalize(PiiField::Email, " José@Exemplo.com.br ", &c).unwrap(),
            "josé@exemplo.com.br"
        );
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(raw in "\\PC{0,40}", field_index in 0usize..11) {
            let field = PiiField::ALL[field_index];
            let c = ctx(Some("US".parse().unwrap()));
            if let Ok(once) = normalize(field, &raw, &c) {
                let twice = normalize(field, &once, &c);
                // Phones lose their "+" and stay valid with the country code; all others are fixed points.
                prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
            }
        }

        #[test]
        fn hashes_are_lowercase_sha256_hex(raw in "\\PC{1,40}") {
            let h = sha256_hex(&raw);
            prop_assert!(looks_like_sha256(&h));
            prop_assert_eq!(h.to_lowercase(), h);
        }
    }
}
