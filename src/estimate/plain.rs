//! The common Gemini body (text contents, an optional system instruction and generation
//! config, nothing else) counted as it is parsed, without building a JSON tree: a
//! `serde_json::Value` of even a short prompt costs a map, a string per key and a vector per
//! array. Anything else (another field, a part that is not text, a value of another type, an
//! array where an object belongs, a repeated key) is `None`, and the body is read as a tree by
//! [`super::estimate`], which words the errors.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// What a plain body counts: its characters of text, the most output tokens it asks for and
/// whether it asks for temperature 0.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Counted {
    pub chars: u64,
    pub max_output: Option<u64>,
    pub temperature_zero: bool,
}

/// Read `body` as a plain Gemini body, if it is one. Its UTF-8 is checked once, whole: read
/// from bytes, serde_json checks each string on its own (a tenth of the reading's cost).
pub(super) fn read(body: &[u8]) -> Option<Counted> {
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let counted = de.deserialize_map(BodyVisitor).ok()?;
    de.end().ok()?;
    Some(counted)
}

/// Not a plain body: the caller reads it as a tree.
fn not_plain<E: de::Error>() -> E {
    E::custom("not a plain body")
}

/// The names a plain body's objects may hold.
enum Key {
    Contents,
    SystemInstruction,
    GenerationConfig,
    Role,
    Parts,
    Text,
    MaxOutputTokens,
    Temperature,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "contents" => Key::Contents,
                    "systemInstruction" => Key::SystemInstruction,
                    "generationConfig" => Key::GenerationConfig,
                    "role" => Key::Role,
                    "parts" => Key::Parts,
                    "text" => Key::Text,
                    "maxOutputTokens" => Key::MaxOutputTokens,
                    "temperature" => Key::Temperature,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Set `slot` once: a repeated key is not plain (a tree keeps the last, this would not know).
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(not_plain()),
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Counted;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a plain body")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counted, A::Error> {
        let (mut contents, mut system, mut config) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Contents => once(&mut contents, map.next_value::<Contents>()?.0)?,
                Key::SystemInstruction => once(&mut system, map.next_value::<Content>()?.0)?,
                Key::GenerationConfig => once(&mut config, map.next_value::<Option<Config>>()?)?,
                _ => return Err(not_plain()),
            }
        }
        let contents = contents.ok_or_else(not_plain)?;
        let config = config.flatten().unwrap_or_default();
        Ok(Counted {
            chars: contents.saturating_add(system.unwrap_or(0)),
            max_output: config.max_output,
            temperature_zero: config.temperature == Some(0.0),
        })
    }
}

/// The characters of an array whose elements count their own: `Contents` (of `Content`
/// objects) and `Parts` (of text parts).
struct Sum<T>(u64, PhantomData<T>);

type Contents = Sum<Content>;
type Parts = Sum<TextPart>;

/// An element of a [`Sum`]: the characters it counts.
trait Counts {
    fn chars(&self) -> u64;
}

impl<'de, T: de::Deserialize<'de> + Counts> de::Deserialize<'de> for Sum<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sum<T>, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: de::Deserialize<'de> + Counts> Visitor<'de> for V<T> {
            type Value = Sum<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of contents or parts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sum<T>, A::Error> {
                let mut chars = 0u64;
                while let Some(e) = seq.next_element::<T>()? {
                    chars = chars.saturating_add(e.chars());
                }
                Ok(Sum(chars, PhantomData))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// The characters of a `Content` object of text parts (its role is not counted).
struct Content(u64);

impl Counts for Content {
    fn chars(&self) -> u64 {
        self.0
    }
}

impl<'de> de::Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a content object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
                let (mut role, mut parts) = (None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Role => once(&mut role, map.next_value::<Checked>()?)?,
                        Key::Parts => once(&mut parts, map.next_value::<Parts>()?.0)?,
                        _ => return Err(not_plain()),
                    }
                }
                Ok(Content(parts.unwrap_or(0)))
            }
        }
        d.deserialize_map(V)
    }
}

/// The characters of a part that holds text and nothing else.
struct TextPart(u64);

impl Counts for TextPart {
    fn chars(&self) -> u64 {
        self.0
    }
}

impl<'de> de::Deserialize<'de> for TextPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TextPart, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextPart;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a text part")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextPart, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Text => once(&mut text, map.next_value::<Chars>()?.0)?,
                        _ => return Err(not_plain()),
                    }
                }
                text.map(TextPart).ok_or_else(not_plain)
            }
        }
        d.deserialize_map(V)
    }
}

/// The characters of a string (unescaped, counted without keeping it).
struct Chars(u64);

impl<'de> de::Deserialize<'de> for Chars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chars, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Chars;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Chars, E> {
                Ok(Chars(s.chars().count() as u64))
            }
        }
        d.deserialize_str(V)
    }
}

/// The generation settings the estimate reports; the others are Google's to check.
#[derive(Default)]
struct Config {
    max_output: Option<u64>,
    temperature: Option<f64>,
}

impl<'de> de::Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Config, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Config;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a generation config")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
                let (mut max_output, mut temperature) = (None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::MaxOutputTokens => {
                            once(&mut max_output, map.next_value::<Option<u64>>()?)?
                        }
                        Key::Temperature => {
                            once(&mut temperature, map.next_value::<Option<f64>>()?)?
                        }
                        // A repeated other setting is Google's to refuse; its value is not read.
                        _ => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(Config {
                    max_output: max_output.flatten(),
                    temperature: temperature.flatten(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Any JSON value, read as a tree would read it (strings' UTF-8 and escapes, numbers' range
/// checked) but kept nowhere: a value the tree would refuse is refused here too.
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_key::<Checked>()?.is_some() {
                    map.next_value::<Checked>()?;
                }
                Ok(Checked)
            }
        }
        d.deserialize_any(V)
    }
}
