//! The macros generated code is written in: JSON objects and untagged unions with serde
//! implementations spelled out once here, instead of `serde_derive`. They compile in about
//! half the time of derived ones, keep unknown keys without serde's buffering `flatten`, and
//! leave this crate with no proc-macro dependencies.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap};

/// A map key, borrowed from the input where it can be.
#[doc(hidden)]
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// What a JSON object type does with keys it does not name.
#[doc(hidden)]
pub trait Rest: Default {
    fn accept<'de, A: MapAccess<'de>>(
        &mut self,
        key: Cow<'de, str>,
        map: &mut A,
    ) -> Result<(), A::Error>;
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
}

/// Kept as JSON, so that a round trip loses nothing.
impl Rest for crate::JsonObject {
    fn accept<'de, A: MapAccess<'de>>(
        &mut self,
        key: Cow<'de, str>,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let value: crate::JsonValue = map.next_value()?;
        self.insert(key.into_owned(), value);
        Ok(())
    }
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        self.iter().try_for_each(|(k, v)| map.serialize_entry(k, v))
    }
}

/// Typed by the schema's `additionalProperties` or `patternProperties`.
impl<T: for<'de> Deserialize<'de> + Serialize> Rest for BTreeMap<String, T> {
    fn accept<'de, A: MapAccess<'de>>(
        &mut self,
        key: Cow<'de, str>,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let value: T = map.next_value()?;
        self.insert(key.into_owned(), value);
        Ok(())
    }
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        self.iter().try_for_each(|(k, v)| map.serialize_entry(k, v))
    }
}

/// `additionalProperties: false`: nothing else is expected, and anything else is dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[doc(hidden)]
pub struct Closed;

impl Rest for Closed {
    fn accept<'de, A: MapAccess<'de>>(
        &mut self,
        _key: Cow<'de, str>,
        map: &mut A,
    ) -> Result<(), A::Error> {
        map.next_value::<IgnoredAny>().map(drop)
    }
    fn write<M: SerializeMap>(&self, _map: &mut M) -> Result<(), M::Error> {
        Ok(())
    }
}

/// Turns `Option<Option<T>>` into `Option<T>` (a function, so inference needs no method).
#[doc(hidden)]
pub fn flatten<T>(v: Option<Option<T>>) -> Option<T> {
    v.flatten()
}

/// Serde impls for a struct that stands for a JSON object. Each field is listed with its kind
/// and wire name. Kinds: `req` (required), `opt` (optional: absent or `null` is `None`), `req_null`
/// (required, may be `null`), `opt_null` (optional and may be `null`: absent is `None`,
/// `null` is `Some(None)`). The `rest` field takes keys the schema does not name (see
/// [`Rest`]); without one they are dropped.
#[macro_export]
#[doc(hidden)]
macro_rules! json_object {
    ($name:ident { $( $field:ident $kind:ident $wire:literal ),* $(,)? } $( rest $rest:ident )?) => {
        impl serde::Serialize for $name {
            #[allow(unused_mut)]
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap as _;
                let mut m = s.serialize_map(None)?;
                $( $crate::json_object!(@ser $kind m, self.$field, $wire); )*
                $( $crate::macros::Rest::write(&self.$rest, &mut m)?; )?
                m.end()
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($name), ")"))
                    }
                    #[allow(unused_mut)]
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        $( let mut $field = None; )*
                        $( let mut $rest = Default::default(); )?
                        while let Some(key) = map.next_key::<$crate::macros::Key<'de>>()? {
                            match &*key.0 {
                                $( $wire => $crate::json_object!(@read $kind map, $field), )*
                                _ => $crate::json_object!(@rest map, key, $($rest)?),
                            }
                        }
                        Ok($name {
                            $( $field: $crate::json_object!(@finish $kind $field, $wire, A), )*
                            $( $rest, )?
                        })
                    }
                }
                d.deserialize_map(V)
            }
        }
    };

    (@rest $map:ident, $key:ident, $rest:ident) => {
        $crate::macros::Rest::accept(&mut $rest, $key.0, &mut $map)?
    };
    (@rest $map:ident, $key:ident, ) => {
        $crate::macros::Rest::accept(&mut $crate::macros::Closed, $key.0, &mut $map)?
    };

    // An optional field's `null` reads as absent: the spec gives it no meaning of its own
    // there, and clients built on ruma send `null` for unset options (`auth.session`).
    (@read opt $map:ident, $f:ident) => { $f = $map.next_value::<Option<_>>()? };
    (@read $kind:ident $map:ident, $f:ident) => { $f = Some($map.next_value()?) };

    (@ser req $m:ident, $v:expr, $wire:literal) => { $m.serialize_entry($wire, &$v)? };
    (@ser req_null $m:ident, $v:expr, $wire:literal) => { $m.serialize_entry($wire, &$v)? };
    (@ser opt $m:ident, $v:expr, $wire:literal) => { if let Some(v) = &$v { $m.serialize_entry($wire, v)?; } };
    (@ser opt_null $m:ident, $v:expr, $wire:literal) => { if let Some(v) = &$v { $m.serialize_entry($wire, v)?; } };

    (@finish req $f:ident, $wire:literal, $a:ident) => {
        $f.ok_or_else(|| <$a::Error as serde::de::Error>::missing_field($wire))?
    };
    (@finish req_null $f:ident, $wire:literal, $a:ident) => { $crate::macros::flatten($f) };
    (@finish opt $f:ident, $wire:literal, $a:ident) => { $f };
    (@finish opt_null $f:ident, $wire:literal, $a:ident) => { $f };
}

/// Serde impls for an enum that stands for `oneOf`, `anyOf` or a `type` list: the first
/// variant the value fits.
#[macro_export]
#[doc(hidden)]
macro_rules! json_untagged {
    ($name:ident { $( $variant:ident ),* $(,)? }) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( Self::$variant(v) => serde::Serialize::serialize(v, s), )*
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = <$crate::JsonValue as serde::Deserialize>::deserialize(d)?;
                $(
                    if let Ok(v) = serde::Deserialize::deserialize(&value) {
                        return Ok(Self::$variant(v));
                    }
                )*
                Err(<D::Error as serde::de::Error>::custom(concat!(
                    "the value fits no variant of ", stringify!($name)
                )))
            }
        }
    };
}

/// Impls for a string enum whose last variant, `Other(String)`, keeps values this version of
/// the spec does not name, so that a newer server never breaks an older reader.
#[macro_export]
#[doc(hidden)]
macro_rules! string_enum {
    ($name:ident { $( $variant:ident $wire:literal ),* $(,)? }) => {
        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $wire => Self::$variant, )*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let key = <$crate::macros::Key<'de> as serde::Deserialize>::deserialize(d)?;
                Ok(Self::from(&*key.0))
            }
        }
    };
}
