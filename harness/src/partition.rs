//! `run --partition K/N`: one run's tests split among N machines by a fixed hash of each test's
//! name (a scenario's name, or a sweep's: `membership/kick_and_ban`, `sweeps/no_token/sync`),
//! so every machine picks the same split without talking to the others, and a test keeps its
//! partition when others are added or removed.
//!
//! The hash is FNV-1a (64 bits) of the name's UTF-8 bytes, then MurmurHash3's 64-bit finaliser
//! (`fmix64`); a name is in partition `hash % N + 1`. The finaliser is there because FNV-1a's
//! lowest bit is only the parity of the name's bytes, which would decide every split in two.
//! Both are fixed: changing them would move tests between machines mid-pipeline, and the
//! tests pin names to their partitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Partition `index` of `count` (1 <= index <= count).
/// In reports, its label: `"2/3"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    index: u64,
    count: u64,
}

impl Partition {
    pub fn new(index: u64, count: u64) -> Result<Partition, String> {
        if count == 0 {
            return Err("N must be at least 1".into());
        }
        if index == 0 || index > count {
            return Err(format!("K must be between 1 and N ({count}); got {index}"));
        }
        Ok(Partition { index, count })
    }

    /// The partition of `count` that `name` is in.
    pub fn of(name: &str, count: u64) -> Partition {
        let count = count.max(1);
        Partition {
            index: name_hash(name) % count + 1,
            count,
        }
    }

    /// K, from 1.
    pub fn index(self) -> u64 {
        self.index
    }

    /// N.
    pub fn count(self) -> u64 {
        self.count
    }

    /// Whether the test named `name` runs in this partition.
    pub fn contains(self, name: &str) -> bool {
        Partition::of(name, self.count) == self
    }
}

/// The hash that places a name: FNV-1a 64, then `fmix64`.
pub fn name_hash(name: &str) -> u64 {
    fmix64(fnv1a_64(name.as_bytes()))
}

/// FNV-1a, 64 bits: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// MurmurHash3's 64-bit finaliser: every input bit reaches every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Partition {
    type Err = String;

    /// `K/N`, as in `2/3`.
    fn from_str(s: &str) -> Result<Partition, String> {
        let shape = || format!("expected K/N with 1 <= K <= N, as in 2/3; got {s:?}");
        let (k, n) = s.split_once('/').ok_or_else(shape)?;
        let number = |t: &str| {
            t.trim()
                .parse::<u64>()
                .ok()
                .filter(|_| !t.trim().starts_with('+'))
        };
        let (k, n) = (number(k).ok_or_else(shape)?, number(n).ok_or_else(shape)?);
        Partition::new(k, n)
    }
}

impl Serialize for Partition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Partition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Partition, D::Error> {
        struct Label;
        impl serde::de::Visitor<'_> for Label {
            type Value = Partition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a partition label K/N")
            }
            // Refused here, while the string is being read, so the error has its position.
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Partition, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published FNV-1a 64 test vectors: the hash is the algorithm it says it is.
    #[test]
    fn fnv1a_matches_the_published_vectors() {
        for (input, expected) in [
            ("", 0xcbf2_9ce4_8422_2325),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            assert_eq!(fnv1a_64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(fmix64(0), 0);
    }

    /// Names pinned to their partitions: if this fails, the hash changed, and CI matrices
    /// mid-flight would run some tests twice and others never.
    #[test]
    fn partitions_are_stable() {
        let check = |name: &str, count: u64, expected: u64| {
            assert_eq!(
                Partition::of(name, count).index(),
                expected,
                "{name} of {count}"
            );
        };
        for (name, of2, of3, of5) in PINNED {
            check(name, 2, *of2);
            check(name, 3, *of3);
            check(name, 5, *of5);
            check(name, 1, 1);
        }
    }

    const PINNED: &[(&str, u64, u64, u64)] = &[
        // name, its partition of 2, of 3, of 5
        ("membership/kick_and_ban", 2, 3, 5),
        ("account/change_password", 2, 2, 5),
        ("federation/joins/room_version[11]", 2, 1, 2),
        ("sweeps/no_token/sync", 1, 1, 3),
        ("sweeps/not_json/sendToDevice", 1, 2, 1),
    ];

    #[test]
    fn every_name_is_in_exactly_one_partition() {
        let names: Vec<String> = (0..500)
            .map(|i| format!("area{}/scenario_{i}", i % 7))
            .chain(PINNED.iter().map(|p| p.0.to_string()))
            .collect();
        for count in 1..=5 {
            let mut sizes = vec![0usize; count as usize];
            for name in &names {
                let holders: Vec<u64> = (1..=count)
                    .filter(|&k| Partition::new(k, count).is_ok_and(|p| p.contains(name)))
                    .collect();
                assert_eq!(holders.len(), 1, "{name} of {count}: in {holders:?}");
                sizes[holders[0] as usize - 1] += 1;
            }
            // Roughly even: none under half its share.
            let share = names.len() / count as usize;
            assert!(sizes.iter().all(|&s| s * 2 >= share), "{count}: {sizes:?}");
        }
    }

    #[test]
    fn labels_parse_and_bad_ones_say_why() {
        for (text, expected) in [
            ("1/1", Ok((1, 1))),
            ("2/3", Ok((2, 3))),
            ("3/3", Ok((3, 3))),
            ("0/2", Err("K must be between 1 and N (2); got 0")),
            ("3/2", Err("K must be between 1 and N (2); got 3")),
            ("1/0", Err("N must be at least 1")),
            ("x", Err("expected K/N")),
            ("1/", Err("expected K/N")),
            ("-1/2", Err("expected K/N")),
            ("+1/2", Err("expected K/N")),
        ] {
            let got = text.parse::<Partition>().map(|p| (p.index(), p.count()));
            match (got, expected) {
                (Ok(g), Ok(e)) => assert_eq!(g, e, "{text}"),
                (Err(g), Err(e)) => assert!(g.contains(e), "{text}: {g}"),
                (g, e) => panic!("{text}: got {g:?}, expected {e:?}"),
            }
        }
        let p: Partition = "2/3".parse().expect("parses");
        assert_eq!(p.to_string(), "2/3");
        assert_eq!(serde_json::to_value(p).expect("serialises"), "2/3");
        assert!(serde_json::from_value::<Partition>(serde_json::json!("4/3")).is_err());
    }
}
