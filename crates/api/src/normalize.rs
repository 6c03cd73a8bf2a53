//! Upstream decodes every object into its Go type and encodes it again, which drops unknown
//! fields and explicit nulls and rewrites values in the type's own form (timestamps in
//! UTC, numbers as the type holds them). rkube decodes into the k8s-openapi type too, but
//! instead of building the re-encoded tree and dropping the decoded one, it walks the
//! type's own `Serialize` along the decoded JSON and changes that in place where the two
//! differ: nowhere, for an object that already reads as stored (every status patch, every
//! object a controller sends). `typed::roundtrip` stays the reference the tests hold this to.

use serde::Serialize;
use serde::ser::{self, Error as _};
use serde_json::{Map, Number, Value};

/// One step of a reported path: an object member or a list position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

/// Rewrites `target` into what `serde_json::to_value(typed)` makes, `typed` having been
/// decoded from it. Returns the non-null members it removed, which are the fields the type
/// does not have, named and ordered as `typed::unknown_fields` names them.
pub(crate) fn normalize<T: Serialize>(typed: &T, target: &mut Value) -> Result<Vec<String>, serde_json::Error> {
    let mut walk = Walk::default();
    typed.serialize(Onto {
        target,
        walk: &mut walk,
    })?;
    // Members by name at every level, depth first: the order the reference walk reports.
    walk.unknown.sort();
    Ok(walk.unknown.iter().map(|steps| text(steps)).collect())
}

fn text(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

enum PathStep {
    Field(&'static str),
    /// A map key: `keys[start..end]`.
    Key(usize, usize),
    Index(usize),
}

#[derive(Default)]
struct Walk {
    /// Where the walk is; only a report turns it into owned steps.
    path: Vec<PathStep>,
    /// The text of the map keys on the path, one after another: a map entry costs no
    /// allocation of its own (managedFields are maps of maps).
    keys: String,
    unknown: Vec<Vec<Step>>,
}

impl Walk {
    fn report(&mut self, removed: String) {
        let mut steps: Vec<Step> = self
            .path
            .iter()
            .map(|step| match *step {
                PathStep::Field(name) => Step::Key(name.to_string()),
                PathStep::Key(start, end) => Step::Key(self.keys.get(start..end).unwrap_or_default().to_string()),
                PathStep::Index(i) => Step::Index(i),
            })
            .collect();
        steps.push(Step::Key(removed));
        self.unknown.push(steps);
    }
}

fn made_object(target: &mut Value) -> Result<&mut Map<String, Value>, serde_json::Error> {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    match target {
        Value::Object(map) => Ok(map),
        _ => Err(serde_json::Error::custom("normalizing: not an object")),
    }
}

fn made_array(target: &mut Value) -> Result<&mut Vec<Value>, serde_json::Error> {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    match target {
        Value::Array(items) => Ok(items),
        _ => Err(serde_json::Error::custom("normalizing: not an array")),
    }
}

/// The member `key` of `map`, added as null when absent.
fn member<'m>(map: &'m mut Map<String, Value>, key: &str) -> Result<&'m mut Value, serde_json::Error> {
    if !map.contains_key(key) {
        map.insert(key.to_string(), Value::Null);
    }
    map.get_mut(key)
        .ok_or_else(|| serde_json::Error::custom("normalizing: member vanished"))
}

/// Removes the `others` members of `map`, reporting the non-null ones.
fn remove(map: &mut Map<String, Value>, others: Vec<String>, walk: &mut Walk) {
    for key in others {
        if let Some(value) = map.remove(&key)
            && !value.is_null()
        {
            walk.report(key);
        }
    }
}

struct Onto<'a> {
    target: &'a mut Value,
    walk: &'a mut Walk,
}

impl Onto<'_> {
    fn set(self, value: Value) -> Result<(), serde_json::Error> {
        if *self.target != value {
            *self.target = value;
        }
        Ok(())
    }

    fn integer(self, integer: impl Into<Number>) -> Result<(), serde_json::Error> {
        self.number(integer.into())
    }

    fn number(self, number: Number) -> Result<(), serde_json::Error> {
        match &*self.target {
            Value::Number(n) if *n == number => Ok(()),
            _ => self.set(Value::Number(number)),
        }
    }
}

use serde_json::value::Serializer as Plain;

/// Serializer methods that hand their value to one helper.
macro_rules! forward {
    ($helper:ident: $($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> Result<(), Self::Error> {
            self.$helper(v)
        }
    )*};
}

impl<'a> ser::Serializer for Onto<'a> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Whole<'a, <Plain as ser::Serializer>::SerializeTupleVariant>;
    type SerializeMap = Members<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Whole<'a, <Plain as ser::Serializer>::SerializeStructVariant>;

    fn serialize_bool(self, v: bool) -> Result<(), Self::Error> {
        self.set(Value::Bool(v))
    }
    forward!(integer: serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64));
    forward!(integer: serialize_u8(u8), serialize_u16(u16), serialize_u32(u32), serialize_u64(u64));
    fn serialize_i128(self, v: i128) -> Result<(), Self::Error> {
        self.set(ser::Serializer::serialize_i128(Plain, v)?)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Self::Error> {
        self.set(ser::Serializer::serialize_u128(Plain, v)?)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Self::Error> {
        self.set(ser::Serializer::serialize_f32(Plain, v)?)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Self::Error> {
        self.set(ser::Serializer::serialize_f64(Plain, v)?)
    }
    fn serialize_char(self, v: char) -> Result<(), Self::Error> {
        self.set(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<(), Self::Error> {
        if self.target.as_str() != Some(v) {
            *self.target = Value::String(v.to_string());
        }
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Self::Error> {
        self.set(ser::Serializer::serialize_bytes(Plain, v)?)
    }
    fn serialize_none(self) -> Result<(), Self::Error> {
        self.set(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Self::Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Self::Error> {
        self.set(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Self::Error> {
        self.set(Value::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Self::Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Self::Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        self.set(ser::Serializer::serialize_newtype_variant(
            Plain, name, index, variant, value,
        )?)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Self::Error> {
        Ok(Seq {
            items: made_array(self.target)?,
            walk: self.walk,
            next: 0,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Self::Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, Self::Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        Ok(Whole {
            target: self.target,
            plain: ser::Serializer::serialize_tuple_variant(Plain, name, index, variant, len)?,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Members<'a>, Self::Error> {
        let base = self.walk.keys.len();
        Ok(Members {
            map: made_object(self.target)?,
            walk: self.walk,
            base,
            key: None,
            ends: Vec::with_capacity(len.unwrap_or(0)),
        })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Fields<'a>, Self::Error> {
        Ok(Fields {
            map: made_object(self.target)?,
            walk: self.walk,
            seen: Vec::with_capacity(len),
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        Ok(Whole {
            target: self.target,
            plain: ser::Serializer::serialize_struct_variant(Plain, name, index, variant, len)?,
        })
    }
}

struct Seq<'a> {
    items: &'a mut Vec<Value>,
    walk: &'a mut Walk,
    next: usize,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), serde_json::Error> {
        if self.next == self.items.len() {
            self.items.push(Value::Null);
        }
        let slot = self
            .items
            .get_mut(self.next)
            .ok_or_else(|| serde_json::Error::custom("normalizing: element vanished"))?;
        self.walk.path.push(PathStep::Index(self.next));
        let result = value.serialize(Onto {
            target: slot,
            walk: self.walk,
        });
        self.walk.path.pop();
        self.next += 1;
        result
    }

    fn finish(self) -> Result<(), serde_json::Error> {
        self.items.truncate(self.next);
        Ok(())
    }
}

/// The three list-like shapes serde has all end up as JSON arrays.
macro_rules! list_like {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = serde_json::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Self::Error> {
                self.finish()
            }
        }
    )*};
}

list_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

struct Members<'a> {
    map: &'a mut Map<String, Value>,
    walk: &'a mut Walk,
    /// The map's keys are written one after another into `walk.keys` from here (each
    /// entry's own nested keys come after it and are cut back when that entry is done)...
    base: usize,
    /// ...and each ends at one of these.
    ends: Vec<usize>,
    /// Where the pending key's text starts.
    key: Option<usize>,
}

impl ser::SerializeMap for Members<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Self::Error> {
        let start = self.walk.keys.len();
        key.serialize(KeyText(&mut self.walk.keys))?;
        self.key = Some(start);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let start = self
            .key
            .take()
            .ok_or_else(|| serde_json::Error::custom("normalizing: a value without its key"))?;
        let end = self.walk.keys.len();
        let slot = member(self.map, self.walk.keys.get(start..).unwrap_or_default())?;
        self.walk.path.push(PathStep::Key(start, end));
        let result = value.serialize(Onto {
            target: slot,
            walk: self.walk,
        });
        self.walk.path.pop();
        self.walk.keys.truncate(end);
        self.ends.push(end);
        result
    }
    fn end(self) -> Result<(), Self::Error> {
        if self.map.len() > self.ends.len() {
            let keys = &self.walk.keys;
            let starts = std::iter::once(self.base).chain(self.ends.iter().copied());
            let kept: Vec<&str> = starts
                .zip(self.ends.iter().copied())
                .map(|(start, end)| keys.get(start..end).unwrap_or_default())
                .collect();
            let others: Vec<String> = self
                .map
                .keys()
                .filter(|key| !kept.contains(&key.as_str()))
                .cloned()
                .collect();
            remove(self.map, others, self.walk);
        }
        self.walk.keys.truncate(self.base);
        Ok(())
    }
}

/// Writes a map key's text the way serde_json does (strings; numbers and booleans as
/// text) onto the end of a buffer.
struct KeyText<'a>(&'a mut String);

impl KeyText<'_> {
    fn push(self, text: impl std::fmt::Display) -> Result<(), serde_json::Error> {
        use std::fmt::Write;
        write!(self.0, "{text}").map_err(serde_json::Error::custom)
    }
}

fn key_must_be_a_string() -> serde_json::Error {
    serde_json::Error::custom("key must be a string")
}

impl ser::Serializer for KeyText<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = ser::Impossible<(), serde_json::Error>;
    type SerializeTuple = ser::Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = ser::Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = ser::Impossible<(), serde_json::Error>;
    type SerializeMap = ser::Impossible<(), serde_json::Error>;
    type SerializeStruct = ser::Impossible<(), serde_json::Error>;
    type SerializeStructVariant = ser::Impossible<(), serde_json::Error>;

    fn serialize_str(self, v: &str) -> Result<(), Self::Error> {
        self.0.push_str(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Self::Error> {
        self.0.push(v);
        Ok(())
    }
    forward!(push: serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32));
    forward!(push: serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32));
    forward!(push: serialize_u64(u64), serialize_i128(i128), serialize_u128(u128));
    fn serialize_f32(self, _: f32) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_f64(self, _: f64) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Self::Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Self::Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Self::Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        Err(key_must_be_a_string())
    }
}

struct Fields<'a> {
    map: &'a mut Map<String, Value>,
    walk: &'a mut Walk,
    seen: Vec<&'static str>,
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Self::Error> {
        let slot = member(self.map, key)?;
        self.walk.path.push(PathStep::Field(key));
        let result = value.serialize(Onto {
            target: slot,
            walk: self.walk,
        });
        self.walk.path.pop();
        self.seen.push(key);
        result
    }
    fn end(self) -> Result<(), Self::Error> {
        if self.map.len() > self.seen.len() {
            let others: Vec<String> = self
                .map
                .keys()
                .filter(|key| !self.seen.contains(&key.as_str()))
                .cloned()
                .collect();
            remove(self.map, others, self.walk);
        }
        Ok(())
    }
}

/// Shapes k8s-openapi does not use: encoded whole by serde_json, then compared.
struct Whole<'a, S> {
    target: &'a mut Value,
    plain: S,
}

impl<S: ser::SerializeTupleVariant<Ok = Value, Error = serde_json::Error>> ser::SerializeTupleVariant for Whole<'_, S> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.plain.serialize_field(value)
    }
    fn end(self) -> Result<(), Self::Error> {
        let value = self.plain.end()?;
        if *self.target != value {
            *self.target = value;
        }
        Ok(())
    }
}

impl<S: ser::SerializeStructVariant<Ok = Value, Error = serde_json::Error>> ser::SerializeStructVariant
    for Whole<'_, S>
{
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Self::Error> {
        self.plain.serialize_field(key, value)
    }
    fn end(self) -> Result<(), Self::Error> {
        let value = self.plain.end()?;
        if *self.target != value {
            *self.target = value;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[derive(Serialize)]
    struct Inner {
        x: i32,
    }

    #[derive(Serialize)]
    struct Outer {
        a: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        gone: Option<i32>,
        m: BTreeMap<String, Inner>,
        list: Vec<Inner>,
    }

    fn outer() -> Outer {
        Outer {
            a: 1,
            gone: None,
            m: [("k".to_string(), Inner { x: 1 }), ("new".to_string(), Inner { x: 2 })].into(),
            list: vec![Inner { x: 5 }],
        }
    }

    #[test]
    fn the_target_becomes_the_encoding_and_what_went_is_reported_by_path() {
        let mut target = json!({
            "a": "one", "gone": null, "zz": 3,
            "m": {"k": {"x": 1, "bogus": 2, "nothing": null}, "old": {"x": 9}},
            "list": [{"x": 5, "y": 1}, {"x": 6}],
        });
        let unknown = normalize(&outer(), &mut target).unwrap();
        assert_eq!(target, serde_json::to_value(outer()).unwrap());
        // Nulls go unreported; by name at every level, depth first.
        assert_eq!(unknown, ["list[0].y", "m.k.bogus", "m.old", "zz"]);
    }

    #[test]
    fn an_object_already_in_its_encoding_is_left_as_it_is() {
        let encoded = serde_json::to_value(outer()).unwrap();
        let mut target = encoded.clone();
        assert_eq!(normalize(&outer(), &mut target).unwrap(), Vec::<String>::new());
        assert_eq!(target, encoded);
        // Shapes replaced wholesale where the type has another.
        let mut target = json!([1, 2]);
        normalize(&outer(), &mut target).unwrap();
        assert_eq!(target, encoded);
    }
}
