//! ITU-T G.711 mu-law (PCMU) and A-law (PCMA) conversion, bit-exact to the reference algorithm.
//!
//! Encoders follow the Sun Microsystems reference (`g711.c`, public domain) with its 16-bit
//! linear input; decoders are 256-entry tables built at compile time from the same algorithm.
//! [`G711Law`] picks mu-law or A-law at run time for a negotiated payload type.

/// Kept at its old path: callers that only need a test tone with G.711 find it here.
pub use crate::tone::ToneGenerator;

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

/// Which G.711 companding law a stream uses, as negotiated in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// Mu-law, RTP payload type 0 (North America, Japan).
    Pcmu,
    /// A-law, RTP payload type 8 (most other countries).
    Pcma,
}

impl G711Law {
    /// The static RTP payload type (RFC 3551 6).
    pub fn payload_type(self) -> u8 {
        match self {
            Self::Pcmu => 0,
            Self::Pcma => 8,
        }
    }

    /// The law of a static RTP payload type, if it is G.711.
    pub fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Self::Pcmu),
            8 => Some(Self::Pcma),
            _ => None,
        }
    }

    /// Encodes `min(pcm.len(), out.len())` samples.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        match self {
            Self::Pcmu => encode_ulaw(pcm, out),
            Self::Pcma => encode_alaw(pcm, out),
        }
    }

    /// Decodes `min(codes.len(), out.len())` codes.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) {
        match self {
            Self::Pcmu => decode_ulaw(codes, out),
            Self::Pcma => decode_alaw(codes, out),
        }
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
    fn law_dispatches_and_maps_payload_types() {
        let pcm = [0i16, 1000, -1000];
        let (mut u, mut a) = ([0u8; 3], [0u8; 3]);
        G711Law::Pcmu.encode(&pcm, &mut u);
        G711Law::Pcma.encode(&pcm, &mut a);
        assert_eq!(u[1], ulaw_encode(1000));
        assert_eq!(a[1], alaw_encode(1000));
        let mut back = [0i16; 3];
        G711Law::Pcma.decode(&a, &mut back);
        assert_eq!(back[2], alaw_decode(a[2]));
        for law in [G711Law::Pcmu, G711Law::Pcma] {
            assert_eq!(G711Law::from_payload_type(law.payload_type()), Some(law));
        }
        assert_eq!(G711Law::from_payload_type(9), None);
    }
}
