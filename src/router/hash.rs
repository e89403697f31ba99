//! Key -> vshard, exactly as PostgreSQL's hash partitioning computes a partition
//! (DESIGN.md section 3): a backend table `PARTITION BY HASH (key)` with modulus
//! 1000 puts each row in the partition whose remainder is pgshard's vshard, and SQL on
//! a backend can compute a row's vshard.
//!
//! The hash is Bob Jenkins' lookup3 as in PostgreSQL's `src/common/hashfn.c`
//! (`hash_bytes_extended`, `hash_bytes_uint32_extended`), little-endian byte order.

/// PostgreSQL's `HASH_PARTITION_SEED`.
pub const SEED: u64 = 0x7A5B_2236_7996_DCFD;
/// What `hash_combine64(0, h)` adds to a key's hash.
pub const COMBINE: u64 = 0x49a0_f4dd_15e5_a8e3;

/// How a sharding key column's values hash: int2, int4 and int8 alike; text and
/// varchar alike; uuid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyType {
    Int,
    Text,
    Uuid,
}

impl KeyType {
    /// From a SQL type name as the shard map writes it.
    pub fn parse(name: &str) -> Option<KeyType> {
        match name.to_ascii_lowercase().as_str() {
            "int2" | "smallint" | "int4" | "int" | "integer" | "int8" | "bigint" => {
                Some(KeyType::Int)
            }
            "text" | "varchar" | "character varying" => Some(KeyType::Text),
            "uuid" => Some(KeyType::Uuid),
            _ => None,
        }
    }
}

/// A sharding key's value, typed as its column is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// int2, int4 and int8 hash alike.
    Int(i64),
    /// text and varchar: the UTF-8 bytes.
    Text(Vec<u8>),
    Uuid([u8; 16]),
}

impl Key {
    /// The key's hash as PostgreSQL's extended hash functions compute it.
    pub fn hash(&self, seed: u64) -> u64 {
        match self {
            Key::Int(v) => hashint8extended(*v, seed),
            Key::Text(bytes) => hash_bytes_extended(bytes, seed),
            Key::Uuid(bytes) => hash_bytes_extended(bytes, seed),
        }
    }

    /// The key's vshard among `vshards` (1000 unless the map says otherwise).
    pub fn vshard(&self, vshards: u32) -> u32 {
        let combined = self.hash(SEED).wrapping_add(COMBINE);
        // `vshards` is at least 1 (the shard map checks it), so this is in range.
        (combined % u64::from(vshards.max(1))) as u32
    }
}

/// `hashint8extended`: int8 values that fit in int4 hash like int4 (and int2).
pub fn hashint8extended(value: i64, seed: u64) -> u64 {
    let lo = value as u32;
    let hi = (value >> 32) as u32;
    let folded = if value >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_bytes_uint32_extended(folded, seed)
}

/// `hash_bytes_uint32_extended`.
pub fn hash_bytes_uint32_extended(k: u32, seed: u64) -> u64 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let mut s = State::new(init, seed);
    s.a = s.a.wrapping_add(k);
    s.finish()
}

/// `hash_bytes_extended` (what `hashtextextended` and `uuid_hash_extended` use).
pub fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    // PostgreSQL takes the length as a 32-bit int; longer keys do not occur here
    // (a message is at most 64 MiB), and wrapping is what C would do.
    let init = 0x9e37_79b9u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(3_923_095);
    let mut s = State::new(init, seed);
    let mut chunks = key.chunks_exact(12);
    for chunk in &mut chunks {
        s.a = s.a.wrapping_add(le32(&chunk[0..4]));
        s.b = s.b.wrapping_add(le32(&chunk[4..8]));
        s.c = s.c.wrapping_add(le32(&chunk[8..12]));
        s.mix();
    }
    let rest = chunks.remainder();
    // The tail: a gets bytes 0..4, b 4..8, c 8..11 shifted up one byte (the lowest
    // byte of c is left for the length, as in lookup3).
    for (i, &byte) in rest.iter().enumerate() {
        let byte = u32::from(byte);
        match i {
            0..=3 => s.a = s.a.wrapping_add(byte << (8 * i)),
            4..=7 => s.b = s.b.wrapping_add(byte << (8 * (i - 4))),
            _ => s.c = s.c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    s.finish()
}

fn le32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

struct State {
    a: u32,
    b: u32,
    c: u32,
}

impl State {
    fn new(init: u32, seed: u64) -> State {
        let mut s = State {
            a: init,
            b: init,
            c: init,
        };
        if seed != 0 {
            s.a = s.a.wrapping_add((seed >> 32) as u32);
            s.b = s.b.wrapping_add(seed as u32);
            s.mix();
        }
        s
    }

    fn mix(&mut self) {
        let (mut a, mut b, mut c) = (self.a, self.b, self.c);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        (self.a, self.b, self.c) = (a, b, c);
    }

    /// lookup3's `final`, then the 64-bit result `b << 32 | c`.
    fn finish(mut self) -> u64 {
        let (mut a, mut b, mut c) = (self.a, self.b, self.c);
        c ^= b;
        c = c.wrapping_sub(b.rotate_left(14));
        a ^= c;
        a = a.wrapping_sub(c.rotate_left(11));
        b ^= a;
        b = b.wrapping_sub(a.rotate_left(25));
        c ^= b;
        c = c.wrapping_sub(b.rotate_left(16));
        a ^= c;
        a = a.wrapping_sub(c.rotate_left(4));
        b ^= a;
        b = b.wrapping_sub(a.rotate_left(14));
        c ^= b;
        c = c.wrapping_sub(b.rotate_left(24));
        (self.a, self.b, self.c) = (a, b, c);
        (u64::from(self.b) << 32) | u64::from(self.c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN.md section 3, read off PostgreSQL 15 (signed bigint results).
    #[test]
    fn postgres_test_vectors() {
        let int = |v: i64, seed: u64| hashint8extended(v, seed) as i64;
        let text = |s: &str, seed: u64| hash_bytes_extended(s.as_bytes(), seed) as i64;
        assert_eq!(int(42, 0), 8010225493015854792);
        assert_eq!(int(42, SEED), 7363975540656877951);
        assert_eq!(int(-1, 0), -1888257769727981238);
        assert_eq!(int(5_000_000_000, SEED), -2799505259769899283);
        assert_eq!(text("abc", 0), -6747756470228489321);
        assert_eq!(text("abc", SEED), 3628778498291917250);
        assert_eq!(text("the quick brown fox jumps", SEED), 6110941752397460172);
    }

    /// `PARTITION BY HASH` with `MODULUS 4` (DESIGN.md section 3).
    #[test]
    fn modulus_four_partitions() {
        for (key, part) in [(1, 0), (2, 2), (3, 1), (4, 3), (42, 2), (100_000, 1)] {
            assert_eq!(Key::Int(key).vshard(4), part, "int {key}");
        }
        for (key, part) in [("abc", 1), ("hello", 0), ("user_42", 0)] {
            assert_eq!(Key::Text(key.into()).vshard(4), part, "text {key}");
        }
    }

    #[test]
    fn every_vshard_is_in_range() {
        for v in [-5_i64, 0, 7, i64::MAX, i64::MIN] {
            assert!(Key::Int(v).vshard(1000) < 1000);
        }
        assert_eq!(Key::Int(7).vshard(1), 0);
        assert!(Key::Uuid([7; 16]).vshard(1000) < 1000);
        // Every tail length of the byte hash.
        for len in 0..40 {
            let key = Key::Text(vec![b'x'; len]);
            assert!(key.vshard(1000) < 1000);
        }
    }
}
