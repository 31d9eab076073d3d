//! `publish --key-field NAME`: the envelope key of each line from a field of
//! its JSON object, so that keyed events reach their partition (and keep
//! their order) from one `publish` process.
//!
//! Only that field is decoded: the rest of the line is skipped over, not
//! built into a value (the line is parsed once more as the message's data).

use std::fmt;

use anyhow::{bail, Result};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The key named `field` in the JSON object `text`: a string as it is, a
/// number or a boolean as its JSON text. An error for a line that is not an
/// object, lacks the field, or has a null, an object or an array there.
pub fn key_of(text: &str, field: &str) -> Result<String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Field(field).deserialize(&mut de);
    let found = match found {
        Ok(found) => found,
        Err(e) if e.is_data() && e.to_string().starts_with("not an object") => {
            bail!("--key-field {field:?}: the line is not a JSON object")
        }
        Err(e) => bail!("not valid JSON: {e}"),
    };
    match found {
        None => bail!("--key-field {field:?}: the line has no field {field:?}"),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(v.to_string()),
        Some(other) => bail!(
            "--key-field {field:?}: the field is {}, not a string or a number",
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            }
        ),
    }
}

/// Decodes one field of an object (the last one, if repeated), skipping the rest.
struct Field<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 {
                found = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom("not an object"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(de::Error::custom("not an object"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(de::Error::custom("not an object"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(de::Error::custom("not an object"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(de::Error::custom("not an object"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(de::Error::custom("not an object"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(de::Error::custom("not an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::key_of;

    #[test]
    fn takes_the_field_and_says_what_is_wrong() {
        assert_eq!(
            key_of(r#"{"host":"web-1","n":[1,{"host":2}]}"#, "host").unwrap(),
            "web-1"
        );
        assert_eq!(
            key_of(r#"{"n":{"host":"x"},"host":42}"#, "host").unwrap(),
            "42"
        );
        assert_eq!(key_of(r#"{"host":true}"#, "host").unwrap(), "true");
        assert_eq!(key_of(r#"{"host":"a\"b"}"#, "host").unwrap(), "a\"b");
        let e = |text: &str| key_of(text, "host").unwrap_err().to_string();
        assert!(
            e(r#"{"n":1}"#).contains("has no field \"host\""),
            "{}",
            e(r#"{"n":1}"#)
        );
        assert!(e(r#"{"host":null}"#).contains("is null"));
        assert!(e(r#"{"host":{"a":1}}"#).contains("is an object"));
        assert!(e(r#"{"host":[1]}"#).contains("is an array"));
        assert!(e("[1,2]").contains("not a JSON object"), "{}", e("[1,2]"));
        assert!(e("7").contains("not a JSON object"));
        assert!(e("{nope").contains("not valid JSON"));
    }
}
