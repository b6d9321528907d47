//! Test tones: a continuous-phase sine generator and a Goertzel detector to find them again.
//!
//! The load generator sends a [`ToneGenerator`] tone through the proxy and an echo Backend, and
//! checks with [`dominant_tone`] that what comes back still carries it, whatever codecs (G.711,
//! Opus, both) the path went through. Goertzel evaluates one DFT bin in O(n) without an FFT
//! and works for any frequency, not only integer bins.

/// The power of the component of `samples` at `freq_hz`, in squared sample units.
///
/// A sine of amplitude `A` at that frequency gives `A^2 / 2` (its mean square), so the result
/// compares directly with [`mean_power`]. Frequencies that do not complete whole periods in the
/// window leak a little into neighbours; use windows of a few hundred samples or more.
/// Empty input or a `sample_rate` of 0 gives 0.
pub fn goertzel_power(samples: &[i16], sample_rate: u32, freq_hz: f32) -> f32 {
    if samples.is_empty() || sample_rate == 0 {
        return 0.0;
    }
    let omega = std::f64::consts::TAU * f64::from(freq_hz) / f64::from(sample_rate);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    // |X(omega)|^2; for a sine of amplitude A over n samples |X| is about A * n / 2.
    let magnitude_sq = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    (2.0 * magnitude_sq.max(0.0) / (n * n)) as f32
}

/// The mean square of `samples` (0 for empty input).
pub fn mean_power(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / samples.len() as f64) as f32
}

/// The strongest of a set of candidate frequencies in a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneMatch {
    /// The candidate frequency with the most power, Hz.
    pub freq_hz: f32,
    /// Its share of the signal's total power, about 1.0 for a clean tone, lower with noise,
    /// distortion or other tones (a codec round trip of a pure tone keeps it above 0.8).
    pub ratio: f32,
}

/// Which of `candidates` carries the most power in `samples`, and its share of all the power.
///
/// `None` when there are no candidates, no samples, a `sample_rate` of 0 or pure silence, so
/// "the tone came back" reads `dominant_tone(..).is_some_and(|m| m.freq_hz == f && m.ratio > x)`.
pub fn dominant_tone(samples: &[i16], sample_rate: u32, candidates: &[f32]) -> Option<ToneMatch> {
    let total = mean_power(samples);
    if total <= 0.0 || sample_rate == 0 {
        return None;
    }
    candidates
        .iter()
        .map(|&f| (f, goertzel_power(samples, sample_rate, f)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(freq_hz, power)| ToneMatch {
            freq_hz,
            ratio: power / total,
        })
}

/// A deterministic sine tone for tests and load generation; allocation-free.
///
/// The phase carries over from one [`fill`](Self::fill) to the next, so successive 20 ms frames
/// join without a click.
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

    #[test]
    fn goertzel_measures_a_sine_as_its_mean_square() {
        let mut pcm = [0i16; 800];
        ToneGenerator::new(1000.0, 8000, 10000).fill(&mut pcm);
        let expected = 10000.0f32 * 10000.0 / 2.0;
        let p = goertzel_power(&pcm, 8000, 1000.0);
        assert!((p / expected - 1.0).abs() < 0.01, "{p} vs {expected}");
        assert!((mean_power(&pcm) / expected - 1.0).abs() < 0.01);
        // Far from the tone there is (almost) nothing.
        assert!(goertzel_power(&pcm, 8000, 2000.0) < expected * 1e-3);
    }

    #[test]
    fn dominant_tone_picks_the_strongest_candidate() {
        let candidates = [440.0, 1000.0, 1500.0, 2500.0];
        let mut strong = [0i16; 960];
        let mut weak = [0i16; 960];
        ToneGenerator::new(1500.0, 48_000, 12000).fill(&mut strong);
        ToneGenerator::new(440.0, 48_000, 3000).fill(&mut weak);
        let mixed: Vec<i16> = strong.iter().zip(&weak).map(|(a, b)| a + b).collect();
        let m = dominant_tone(&mixed, 48_000, &candidates).unwrap();
        assert_eq!(m.freq_hz, 1500.0);
        // 12000^2 / (12000^2 + 3000^2) = 0.94.
        assert!((m.ratio - 0.94).abs() < 0.02, "{m:?}");
        let pure = dominant_tone(&strong, 48_000, &candidates).unwrap();
        assert!(pure.ratio > 0.99, "{pure:?}");
    }

    #[test]
    fn dominant_tone_of_nothing_is_none() {
        assert_eq!(dominant_tone(&[0; 160], 8000, &[1000.0]), None);
        assert_eq!(dominant_tone(&[], 8000, &[1000.0]), None);
        assert_eq!(dominant_tone(&[5; 160], 8000, &[]), None);
        assert_eq!(dominant_tone(&[5; 160], 0, &[1000.0]), None);
        assert_eq!(goertzel_power(&[5; 160], 0, 1000.0), 0.0);
    }
}
