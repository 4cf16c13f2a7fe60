//! What both oracle suites (`http_server_oracle`, `http_client_oracle`) share: a fixed-seed generator,
//! the mutation of well-formed HTTP, and the knobs for a longer search.

/// A fixed-seed generator, so every run tries the same cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// The bytes with a few changed, dropped, doubled or cut off, mostly framing characters.
pub fn mutate(rng: &mut Rng, mut wire: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        if wire.is_empty() {
            break;
        }
        let at = rng.below(wire.len());
        match rng.below(5) {
            0 => {
                let framing_bytes = b"0123456789abcdefABCDEF;\r\n: -,\t";
                wire[at] = framing_bytes[rng.below(framing_bytes.len())];
            }
            1 => {
                wire.remove(at);
            }
            2 => wire.insert(at, wire[at]),
            3 => wire.truncate(at),
            _ => wire[at] = rng.below(256) as u8,
        }
    }
    wire
}

/// A number from the environment (`TOLLGATE_ORACLE_CASES`, `TOLLGATE_ORACLE_SEED`), or the
/// default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
