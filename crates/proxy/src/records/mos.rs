//! A listening-quality estimate of one media direction: the ITU-T G.107 E-model (planning
//! form) from packet loss, jitter and codec, mapped to MOS.
//!
//! `R = R0' - Idd - Ie,eff`, then G.107 Annex B's R to MOS:
//!
//! - `R0' = 93.2`: G.107's default R (`Ro - Is - Id` with every default parameter), so the
//!   talker-echo and listener-echo parts of `Id` are taken at their default values and only the
//!   absolute-delay part `Idd` varies with the session.
//! - `Idd` (G.107 7.4): 0 for a one-way delay `Ta <= 100 ms`, else
//!   `25 * ((1 + X^6)^(1/6) - 3 * (1 + (X/3)^6)^(1/6) + 2)` with `X = log2(Ta / 100 ms)`.
//!   voxgate measures no round trip (it relays RTCP end to end and sends none of its own), so
//!   `Ta` is estimated as the packetisation (20 ms) plus the codec's look-ahead plus a jitter
//!   buffer of twice the measured interarrival jitter: the delay this hop's jitter forces on
//!   the receiver, not the end-to-end mouth-to-ear delay.
//! - `Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)` with random loss (`BurstR = 1`)
//!   and `Ppl` the loss in percent.
//!
//! Codec values (G.113 Appendix I where it has them):
//!
//! | codec | Ie | Bpl | look-ahead | source |
//! |-------|----|-----|------------|--------|
//! | G.711 (PCMU, PCMA) | 0 | 25.1 | 0 ms | G.113 App. I, G.711 with its Appendix I packet-loss concealment (4.3 without PLC); voxgate's peers (Backends, carriers, its own transcoder) conceal loss |
//! | Opus | 0 | 25.1 | 6.5 ms | not in G.113; voxgate's choice: on the narrow-band R scale Opus at the rates WebRTC uses is no worse than G.711, and its PLC/FEC is treated like G.711's PLC |
//! | anything else | 0 | 25.1 | 0 ms | treated as G.711 |

/// G.107's default R with no impairment from this hop.
pub const R_DEFAULT: f64 = 93.2;

/// Packetisation assumed for every codec (voxgate's offers and its peers use 20 ms).
const PACKET_MS: f64 = 20.0;

/// E-model parameters of a codec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    /// Equipment impairment at no loss.
    pub ie: f64,
    /// Packet-loss robustness.
    pub bpl: f64,
    /// Algorithmic look-ahead, ms.
    pub lookahead_ms: f64,
}

impl CodecImpairment {
    /// G.711 with packet-loss concealment (G.113 Appendix I).
    pub const G711_PLC: Self = Self {
        ie: 0.0,
        bpl: 25.1,
        lookahead_ms: 0.0,
    };
    /// Opus (voxgate's choice; see the module docs).
    pub const OPUS: Self = Self {
        ie: 0.0,
        bpl: 25.1,
        lookahead_ms: 6.5,
    };

    /// The values for a codec by its SDP encoding name (`PCMU`, `opus`, ...).
    pub fn for_codec(name: &str) -> Self {
        if name.eq_ignore_ascii_case("opus") {
            Self::OPUS
        } else {
            Self::G711_PLC
        }
    }
}

/// The delay impairment `Idd` for a one-way delay of `ta_ms` (G.107 7.4).
pub fn delay_impairment(ta_ms: f64) -> f64 {
    if ta_ms <= 100.0 {
        return 0.0;
    }
    let x = (ta_ms / 100.0).log2();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
        + 2.0)
}

/// The effective equipment impairment with `loss_pct` percent random loss.
pub fn loss_impairment(codec: CodecImpairment, loss_pct: f64) -> f64 {
    let ppl = loss_pct.clamp(0.0, 100.0);
    codec.ie + (95.0 - codec.ie) * ppl / (ppl + codec.bpl)
}

/// The transmission rating R of a direction with `loss_pct` loss and `jitter_ms` interarrival
/// jitter.
pub fn r_factor(codec: CodecImpairment, loss_pct: f64, jitter_ms: f64) -> f64 {
    let ta = PACKET_MS + codec.lookahead_ms + 2.0 * jitter_ms.max(0.0);
    R_DEFAULT - delay_impairment(ta) - loss_impairment(codec, loss_pct)
}

/// R to MOS (G.107 Annex B).
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6
    }
}

/// The MOS estimate of a direction, rounded to two decimals.
pub fn mos(codec: CodecImpairment, loss_pct: f64, jitter_ms: f64) -> f64 {
    let mos = mos_from_r(r_factor(codec, loss_pct, jitter_ms));
    (mos * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn g711_with_no_loss_is_the_default_point() {
        let r = r_factor(CodecImpairment::G711_PLC, 0.0, 0.0);
        assert!(close(r, 93.2, 1e-9), "{r}");
        assert!(close(mos_from_r(r), 4.41, 0.005), "{}", mos_from_r(r));
        assert_eq!(mos(CodecImpairment::G711_PLC, 0.0, 5.0), 4.41);
    }

    #[test]
    fn r_to_mos_known_points_and_bounds() {
        // G.107 Annex B: R = 50 -> 2.58, R = 70 -> 3.60, R = 80 -> 4.02; clamped outside 0..100.
        assert!(close(mos_from_r(50.0), 2.58, 0.005));
        assert!(close(mos_from_r(70.0), 3.60, 0.005));
        assert!(close(mos_from_r(80.0), 4.02, 0.005));
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
    }

    #[test]
    fn loss_impairment_follows_bpl() {
        // 1 % random loss on G.711: with PLC (Bpl 25.1) Ie,eff = 95 / 26.1; without (4.3) 95 / 5.3.
        let plc = loss_impairment(CodecImpairment::G711_PLC, 1.0);
        assert!(close(plc, 3.64, 0.01), "{plc}");
        let no_plc = CodecImpairment {
            bpl: 4.3,
            ..CodecImpairment::G711_PLC
        };
        assert!(close(loss_impairment(no_plc, 1.0), 17.92, 0.01));
        assert!(close(
            loss_impairment(CodecImpairment::G711_PLC, 100.0),
            75.94,
            0.01
        ));
        // More loss is never better.
        let mut last = 5.0;
        for pct in [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0] {
            let m = mos(CodecImpairment::G711_PLC, pct, 0.0);
            assert!(m <= last, "{pct}: {m} > {last}");
            last = m;
        }
    }

    #[test]
    fn delay_impairment_starts_past_100_ms() {
        assert_eq!(delay_impairment(100.0), 0.0);
        // X = 1 and X = 2 in G.107's formula.
        assert!(
            close(delay_impairment(200.0), 3.04, 0.01),
            "{}",
            delay_impairment(200.0)
        );
        assert!(
            close(delay_impairment(400.0), 24.07, 0.01),
            "{}",
            delay_impairment(400.0)
        );
        // 60 ms of jitter: a 140 ms jitter buffer -> 160 ms one way.
        let r = r_factor(CodecImpairment::G711_PLC, 0.0, 70.0);
        assert!(r < 93.2 && r > 85.0, "{r}");
    }

    #[test]
    fn codec_names() {
        assert_eq!(CodecImpairment::for_codec("OPUS"), CodecImpairment::OPUS);
        assert_eq!(
            CodecImpairment::for_codec("PCMA"),
            CodecImpairment::G711_PLC
        );
    }
}
