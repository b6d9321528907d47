//! ITU-T G.711 mu-law (PCMU) and A-law (PCMA) conversion, bit-exact to the reference algorithm.
//!
//! Encoders follow the Sun Microsystems reference (`g711.c`, public domain) with its 16-bit
//! linear input; decoders are 256-entry tables built at compile time from the same algorithm.
//! [`ToneGenerator`] makes deterministic test tones.

const SIGN_BIT: u8 = 0x80;
const QUANT_MASK: u8 = 0x0f;
const SEG_SHIFT: u32 = 4;
const SEG_MASK: u8 = 0x70;
/// Mu-law bias in the 16-bit domain (33 in the 14-bit domain).
const ULAW_BIAS: i32 = 0x84;
/// Largest 14-bit magnitude before the bias; larger inputs clip.
const ULAW_CLIP: i32 = 8159;

/// Encodes one 16-bit linear sample as mu-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    // The reference quantizes 14-bit input: drop the two low bits (arithmetic shift).
    let mut pcm = i32::from(sample) >> 2;
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7f
    } else {
        0xff
    };
    pcm = pcm.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    // Segment i holds biased magnitudes up to 2^(i+6) - 1.
    let bits = 32 - pcm.leading_zeros();
    let seg = bits.saturating_sub(6);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    let code = ((seg as u8) << SEG_SHIFT) | (((pcm >> (seg + 1)) as u8) & QUANT_MASK);
    code ^ mask
}

/// Decodes one mu-law code to a 16-bit linear sample (range -32124..=32124).
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// Encodes one 16-bit linear sample as A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // The reference quantizes 13-bit input.
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    // Segment i holds magnitudes up to 2^(i+5) - 1; a 13-bit magnitude is at most 4095 (seg 7).
    let bits = 32 - pcm.leading_zeros();
    let seg = bits.saturating_sub(5);
    if seg >= 8 {
        return 0x7f ^ mask;
    }
    let shift = if seg < 2 { 1 } else { seg };
    let code = ((seg as u8) << SEG_SHIFT) | (((pcm >> shift) as u8) & QUANT_MASK);
    code ^ mask
}

/// Decodes one A-law code to a 16-bit linear sample (range -32256..=32256).
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

/// Encodes `min(pcm.len(), out.len())` samples as mu-law.
pub fn encode_ulaw(pcm: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = ulaw_encode(s);
    }
}

/// Decodes `min(codes.len(), out.len())` mu-law codes.
pub fn decode_ulaw(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = ulaw_decode(c);
    }
}

/// Encodes `min(pcm.len(), out.len())` samples as A-law.
pub fn encode_alaw(pcm: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = alaw_encode(s);
    }
}

/// Decodes `min(codes.len(), out.len())` A-law codes.
pub fn decode_alaw(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = alaw_decode(c);
    }
}

/// Reference `ulaw2linear`.
const fn ulaw_decode_reference(code: u8) -> i16 {
    let u = !code;
    let t = (((u & QUANT_MASK) as i32) << 3) + ULAW_BIAS;
    let t = t << ((u & SEG_MASK) >> SEG_SHIFT);
    (if u & SIGN_BIT != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

/// Reference `alaw2linear`.
const fn alaw_decode_reference(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & QUANT_MASK) as i32) << 4;
    let seg = (a & SEG_MASK) >> SEG_SHIFT;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & SIGN_BIT != 0 { t } else { -t }) as i16
}

const ULAW_TABLE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_decode_reference(i as u8);
        i += 1;
    }
    table
};

const ALAW_TABLE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_decode_reference(i as u8);
        i += 1;
    }
    table
};

/// A deterministic sine tone for tests and load generation; allocation-free.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    /// Phase advance per sample, radians.
    step: f64,
    /// Current phase, radians, kept in [0, 2*pi).
    phase: f64,
    amplitude: f64,
}

impl ToneGenerator {
    /// A sine of `freq_hz` sampled at `sample_rate` Hz with peak `amplitude`, starting at phase 0.
    ///
    /// A `sample_rate` of 0 yields silence rather than dividing by zero.
    pub fn new(freq_hz: f64, sample_rate: u32, amplitude: i16) -> Self {
        let step = if sample_rate == 0 {
            0.0
        } else {
            std::f64::consts::TAU * freq_hz / f64::from(sample_rate)
        };
        Self {
            step,
            phase: 0.0,
            amplitude: f64::from(amplitude),
        }
    }

    /// Writes the next `out.len()` samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            // `as` saturates, so an amplitude of i16::MIN cannot overflow.
            *s = (self.amplitude * self.phase.sin()).round() as i16;
            self.phase = (self.phase + self.step).rem_euclid(std::f64::consts::TAU);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Sun reference `linear2ulaw`, with its table search, to check the fast path against.
    fn ulaw_encode_reference(sample: i16) -> u8 {
        const SEG_UEND: [i32; 8] = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
        let mut pcm = i32::from(sample) >> 2;
        let mask = if pcm < 0 {
            pcm = -pcm;
            0x7f
        } else {
            0xff
        };
        pcm = pcm.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
        let seg = SEG_UEND.iter().position(|&e| pcm <= e).unwrap_or(8);
        if seg >= 8 {
            return 0x7f ^ mask;
        }
        let code = ((seg as u8) << 4) | (((pcm >> (seg + 1)) & 0xf) as u8);
        code ^ mask
    }

    /// The Sun reference `linear2alaw`.
    fn alaw_encode_reference(sample: i16) -> u8 {
        const SEG_AEND: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
        let mut pcm = i32::from(sample) >> 3;
        let mask = if pcm >= 0 {
            0xd5
        } else {
            pcm = -pcm - 1;
            0x55
        };
        let seg = SEG_AEND.iter().position(|&e| pcm <= e).unwrap_or(8);
        if seg >= 8 {
            return 0x7f ^ mask;
        }
        let shift = if seg < 2 { 1 } else { seg };
        let code = ((seg as u8) << 4) | (((pcm >> shift) & 0xf) as u8);
        code ^ mask
    }

    #[test]
    fn known_vectors() {
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x7f), 0);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0xfe), 8);
        assert_eq!(ulaw_decode(0xf0), 120);
        assert_eq!(ulaw_decode(0xef), 132);

        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
        assert_eq!(alaw_decode(0xaa), 32256);
        assert_eq!(alaw_decode(0x2a), -32256);
    }

    #[test]
    fn fast_encoders_match_reference_for_every_input() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(s), ulaw_encode_reference(s), "ulaw {s}");
            assert_eq!(alaw_encode(s), alaw_encode_reference(s), "alaw {s}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for c in 0..=255u8 {
            // 0x7f is mu-law's negative zero; it decodes to 0, which encodes as 0xff.
            if c != 0x7f {
                assert_eq!(ulaw_encode(ulaw_decode(c)), c, "ulaw {c:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "alaw {c:#04x}");
        }
    }

    #[test]
    fn decoders_are_odd_symmetric_and_monotonic() {
        for c in 0..128u8 {
            assert_eq!(ulaw_decode(c), -ulaw_decode(c | 0x80));
            assert_eq!(alaw_decode(c), -alaw_decode(c | 0x80));
        }
        // Mu-law positive codes 0xff..=0x80 decode increasingly.
        for c in 0x81..=0xffu8 {
            assert!(ulaw_decode(c) < ulaw_decode(c - 1));
        }
    }

    /// Quantization error is at most half a step; steps double per segment, so the bound grows
    /// with the magnitude: mu-law step <= (|x| + 132) / 16, A-law step <= |x| / 16 (and 16 in
    /// the two linear segments). Beyond the largest decodable value the error is clipping.
    #[test]
    fn round_trip_error_is_bounded() {
        for s in i16::MIN..=i16::MAX {
            let x = i32::from(s);
            let mag = x.abs();
            let u = i32::from(ulaw_decode(ulaw_encode(s)));
            let a = i32::from(alaw_decode(alaw_encode(s)));
            let u_bound = if mag > 32124 {
                mag - 32124
            } else {
                (mag + 132) / 32 + 4
            };
            let a_bound = if mag > 32256 {
                mag - 32256 + 8
            } else {
                (mag / 32).max(8) + 8
            };
            assert!((x - u).abs() <= u_bound, "ulaw {s} -> {u}");
            assert!((x - a).abs() <= a_bound, "alaw {s} -> {a}");
            // Sign is preserved (zero may map either way for tiny inputs).
            assert!(u == 0 || (u > 0) == (x > 0) || mag < 8, "ulaw sign {s}");
        }
    }

    #[test]
    fn slice_helpers_use_the_shorter_length() {
        let pcm = [0i16, 1000, -1000, 32767];
        let mut codes = [0u8; 3];
        encode_ulaw(&pcm, &mut codes);
        assert_eq!(codes, [0xff, ulaw_encode(1000), ulaw_encode(-1000)]);
        let mut back = [7i16; 5];
        decode_ulaw(&codes, &mut back);
        assert_eq!(back[3..], [7, 7]);
        assert_eq!(back[0], 0);
        encode_alaw(&pcm, &mut codes);
        assert_eq!(codes[0], 0xd5);
        decode_alaw(&codes, &mut back);
        assert_eq!(back[0], 8);
    }

    #[test]
    fn tone_is_deterministic_and_bounded() {
        let mut a = ToneGenerator::new(1000.0, 8000, 16000);
        let mut b = ToneGenerator::new(1000.0, 8000, 16000);
        let (mut x, mut y) = ([0i16; 160], [0i16; 160]);
        a.fill(&mut x);
        b.fill(&mut y[..80]);
        b.fill(&mut y[80..]);
        assert_eq!(x, y);
        // 1 kHz at 8 kHz: 8 samples per period, peak at sample 2.
        assert_eq!(x[0], 0);
        assert_eq!(x[2], 16000);
        assert_eq!(x[6], -16000);
        assert_eq!(x[8], 0);
        assert!(x.iter().all(|s| s.abs() <= 16000));
        let mut silent = ToneGenerator::new(440.0, 0, 1000);
        silent.fill(&mut x);
        assert!(x.iter().all(|&s| s == 0));
    }
}
