//! JSON <-> MessagePack for people at the command line (the wire is always MessagePack).

use serde_json::Value as Json;

/// Encodes JSON as MessagePack (maps keep their field names).
pub fn to_msgpack(json: &Json) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(json).map_err(|e| e.to_string())
}

/// Decodes any MessagePack value as JSON: binary becomes an array of byte values,
/// non-string map keys are written as their JSON text.
pub fn from_msgpack(bytes: &[u8]) -> Result<Json, String> {
    if bytes.is_empty() {
        return Ok(Json::Null);
    }
    let v = rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| e.to_string())?;
    Ok(convert(v))
}

fn convert(v: rmpv::Value) -> Json {
    use rmpv::Value as M;
    match v {
        M::Nil => Json::Null,
        M::Boolean(b) => Json::Bool(b),
        M::Integer(i) => i
            .as_i64()
            .map(Json::from)
            .or_else(|| i.as_u64().map(Json::from))
            .unwrap_or(Json::Null),
        M::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        M::F64(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        M::String(s) => Json::String(s.into_str().unwrap_or_default()),
        M::Binary(b) => Json::Array(b.into_iter().map(Json::from).collect()),
        M::Array(a) => Json::Array(a.into_iter().map(convert).collect()),
        M::Map(m) => Json::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) => s.into_str().unwrap_or_default(),
                        other => convert(other).to_string(),
                    };
                    (key, convert(v))
                })
                .collect(),
        ),
        M::Ext(_, b) => Json::Array(b.into_iter().map(Json::from).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_json() {
        let j: Json = serde_json::json!({"a": 1, "b": [true, null, "x"], "c": {"d": 1.5}, "e": -3});
        assert_eq!(from_msgpack(&to_msgpack(&j).unwrap()).unwrap(), j);
        assert!(from_msgpack(b"\x92\x01").is_err(), "truncated array");
    }
}
