//! Which operation a request body asks for, read without trusting its shape: every entry
//! of a MessagePack map is looked at, so a second `op`, an `op` sent as bytes (serde's
//! identifiers accept both) or odd keys cannot slip an order past the stage.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The operations the stage cares about that a body names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ops {
    /// Some `op` is `send_order`.
    pub send_order: bool,
    /// Some `op` is `cancel_order`.
    pub cancel_order: bool,
}

/// Reads the ops of a body that is a MessagePack map; `Err` when it is not valid MessagePack.
pub fn ops(body: &[u8]) -> Result<Ops, rmp_serde::decode::Error> {
    rmp_serde::from_slice::<Ops>(body)
}

impl<'de> Deserialize<'de> for Ops {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ops, D::Error> {
        d.deserialize_map(OpsVisitor)
    }
}

struct OpsVisitor;

impl<'de> Visitor<'de> for OpsVisitor {
    type Value = Ops;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ops, A::Error> {
        let mut ops = Ops::default();
        while let Some(key) = m.next_key::<Word>()? {
            if key.is(b"op") {
                let v = m.next_value::<Word>()?;
                ops.send_order |= v.is(b"send_order");
                ops.cancel_order |= v.is(b"cancel_order");
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ops)
    }
}

/// Any MessagePack value, remembered only if it is a short string or byte string.
struct Word(Option<[u8; 16]>, usize);

impl Word {
    fn is(&self, w: &[u8]) -> bool {
        self.0.is_some_and(|b| b.get(..self.1) == Some(w))
    }

    fn of(v: &[u8]) -> Word {
        let mut b = [0u8; 16];
        match b.get_mut(..v.len()) {
            Some(dst) => {
                dst.copy_from_slice(v);
                Word(Some(b), v.len())
            }
            None => Word(None, 0),
        }
    }
}

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
        d.deserialize_any(WordVisitor)
    }
}

struct WordVisitor;

impl<'de> Visitor<'de> for WordVisitor {
    type Value = Word;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Word, E> {
        Ok(Word::of(v.as_bytes()))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Word, E> {
        Ok(Word::of(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Word, E> {
        Ok(Word(None, 0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Word, E> {
        Ok(Word(None, 0))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Word, E> {
        Ok(Word(None, 0))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Word, E> {
        Ok(Word(None, 0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Word, E> {
        Ok(Word(None, 0))
    }
    fn visit_none<E: de::Error>(self) -> Result<Word, E> {
        Ok(Word(None, 0))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Word, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Word(None, 0))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Word, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Word(None, 0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Word, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Word(None, 0))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Word, A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Word(None, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn every_op_entry_is_seen_whatever_its_encoding() {
        use rmpv::Value as V;
        let s = |x: &str| V::String(x.into());
        let b = |x: &str| V::Binary(x.as_bytes().to_vec());
        let cases = [
            (V::Map(vec![(s("op"), s("send_order"))]), true),
            (
                V::Map(vec![
                    (s("op"), s("query_account")),
                    (s("op"), s("send_order")),
                ]),
                true,
            ),
            (V::Map(vec![(b("op"), b("send_order"))]), true),
            (
                V::Map(vec![
                    (V::from(1), V::Nil),
                    (s("x"), V::Array(vec![])),
                    (s("op"), s("send_order")),
                ]),
                true,
            ),
            (V::Map(vec![(s("op"), V::from(7))]), false),
            (V::Map(vec![(s("op"), s("send_orderX"))]), false),
            (
                V::Map(vec![(s("op"), s("a very long operation name indeed"))]),
                false,
            ),
        ];
        for (v, send) in cases {
            assert_eq!(ops(&pack(&v)).unwrap().send_order, send, "{v}");
        }
        let cancel = V::Map(vec![(s("op"), s("cancel_order"))]);
        assert!(ops(&pack(&cancel)).unwrap().cancel_order);
        assert!(ops(b"\x81\xa2op").is_err(), "truncated");
    }
}
