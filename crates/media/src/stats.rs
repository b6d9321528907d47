//! Receiver statistics of one RTP stream: RFC 3550 A.1 sequence tracking, A.3 loss, A.8 jitter.
//!
//! One deliberate difference from the RFC's sample code: when probation ends, all
//! `MIN_SEQUENTIAL` packets that passed it are counted (the RFC counts only the last one), so a
//! clean stream of N packets reports `expected() == N` and no loss. After a resync (a jump
//! beyond `MAX_DROPOUT` confirmed by the next packet) the counters restart, as in the RFC.

use std::time::Instant;

use crate::rtcp::ReportBlock;

/// Sequential packets needed before a source is valid (RFC 3550 A.1).
pub const MIN_SEQUENTIAL: u16 = 2;
/// Largest forward jump still treated as loss rather than a restart.
pub const MAX_DROPOUT: u16 = 3000;
/// Largest backward step still treated as reordering rather than a restart.
pub const MAX_MISORDER: u16 = 100;

const RTP_SEQ_MOD: u64 = 1 << 16;
/// Sequence numbers at or below `max_seq` remembered for duplicate detection.
const HISTORY: u16 = 128;

/// What [`StreamStats::update_seq`] made of one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqVerdict {
    /// A valid packet, counted.
    Counted,
    /// Counted, and the sequence restarted with it: the jitter reference restarts too.
    Restarted,
    /// Not counted by A.1 yet: the source is still in probation.
    Held,
    /// Not counted: a jump that the next packet must confirm.
    Rejected,
}

/// Loss, sequence and jitter statistics of one received RTP stream (one SSRC).
#[derive(Debug, Clone)]
pub struct StreamStats {
    clock_rate: u32,
    started: bool,
    max_seq: u16,
    /// Shifted count of sequence number wraps (a multiple of 2^16).
    cycles: u64,
    /// Extended sequence number of the first counted packet; -1 if probation straddled a wrap.
    base_seq: i64,
    /// The sequence number that would confirm a jump; > 0xffff means none pending.
    bad_seq: u32,
    probation: u16,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Bit i set: `max_seq - i` was received.
    history: u128,
    duplicates: u64,
    resyncs: u64,
    packets: u64,
    bytes: u64,
    first_arrival: Option<Instant>,
    /// Previous relative transit time, timestamp units; `None` until a packet sets it.
    transit: Option<u32>,
    /// Jitter scaled by 16 (RFC 3550 A.8 integer form).
    jitter_q4: u64,
    /// Arrival and middle 32 bits of the NTP time of the last SR from this source.
    last_sr: Option<(Instant, u32)>,
}

impl StreamStats {
    /// Statistics for a stream whose RTP clock runs at `clock_rate` Hz (8000 for G.711).
    ///
    /// A rate of 0 is treated as 1 so that conversions never divide by zero.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD as u32 + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            history: 0,
            duplicates: 0,
            resyncs: 0,
            packets: 0,
            bytes: 0,
            first_arrival: None,
            transit: None,
            jitter_q4: 0,
            last_sr: None,
        }
    }

    /// Records one received packet. `arrival` is the receive time (caller's clock); it is
    /// converted to timestamp units with the clock rate, relative to the first packet.
    pub fn record(&mut self, arrival: Instant, sequence: u16, rtp_timestamp: u32, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
        let first = *self.first_arrival.get_or_insert(arrival);
        match self.update_seq(sequence) {
            SeqVerdict::Rejected => return,
            SeqVerdict::Restarted => self.transit = None,
            SeqVerdict::Counted | SeqVerdict::Held => {}
        }
        let elapsed = arrival.saturating_duration_since(first);
        let rate = u64::from(self.clock_rate);
        // u64 arithmetic (no 128-bit division per packet); truncating to 32 bits is the modular
        // arithmetic RTP timestamps use.
        let arrival_ts = elapsed
            .as_secs()
            .wrapping_mul(rate)
            .wrapping_add(u64::from(elapsed.subsec_nanos()) * rate / 1_000_000_000)
            as u32;
        let transit = arrival_ts.wrapping_sub(rtp_timestamp);
        if let Some(prev) = self.transit {
            let d = u64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
            // J += (|D| - J) / 16, kept scaled by 16 with rounding (RFC 3550 A.8).
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Remembers an SR from this source so that report blocks carry LSR and DLSR.
    pub fn record_sender_report(&mut self, arrival: Instant, ntp_timestamp: u64) {
        self.last_sr = Some((arrival, (ntp_timestamp >> 16) as u32));
    }

    /// Every packet passed to [`StreamStats::record`], including duplicates and held ones.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Sum of the `bytes` passed to [`StreamStats::record`] (payload or datagram bytes).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Packets received by the RFC 3550 A.1 count (since the last resync; duplicates included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected: extended highest sequence number - base + 1 (0 before the stream
    /// is valid).
    pub fn expected(&self) -> u64 {
        if !self.started || self.received == 0 {
            return 0;
        }
        let ext_max = (self.cycles + u64::from(self.max_seq)) as i64;
        (ext_max - self.base_seq + 1).max(0) as u64
    }

    /// Cumulative packets lost, negative when duplicates outnumber losses (RFC 3550 A.3).
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Cumulative packets lost, clamped at 0.
    pub fn lost(&self) -> u64 {
        self.cumulative_lost().max(0) as u64
    }

    /// Packets seen again within the last 128 sequence numbers.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Times the sequence restarted after a confirmed jump.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter in seconds.
    pub fn jitter_seconds(&self) -> f64 {
        (self.jitter_q4 as f64 / 16.0) / f64::from(self.clock_rate)
    }

    /// Extended highest sequence number received: wrap count in the high 16 bits.
    pub fn extended_highest_sequence(&self) -> u32 {
        (self.cycles + u64::from(self.max_seq)) as u32
    }

    /// Fraction lost since the previous call, 8-bit fixed point (RFC 3550 A.3); 0 when
    /// duplicates outnumber losses in the interval.
    pub fn take_fraction_lost(&mut self) -> u8 {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        if expected_interval == 0 || lost_interval <= 0 {
            return 0;
        }
        ((lost_interval as u64) * 256 / expected_interval).min(255) as u8
    }

    /// A report block about this stream for an RR or SR, taking the fraction lost. LSR and
    /// DLSR are 0: use [`StreamStats::report_block_at`] when an SR has been recorded.
    pub fn report_block(&mut self, ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: self.take_fraction_lost(),
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.extended_highest_sequence(),
            jitter: self.jitter(),
            last_sr: 0,
            delay_since_last_sr: 0,
        }
    }

    /// Like [`StreamStats::report_block`], with LSR and DLSR (1/65536 s) as of `now`.
    pub fn report_block_at(&mut self, ssrc: u32, now: Instant) -> ReportBlock {
        let mut block = self.report_block(ssrc);
        if let Some((at, lsr)) = self.last_sr {
            let delay = now.saturating_duration_since(at).as_nanos() * 65536 / 1_000_000_000;
            block.last_sr = lsr;
            block.delay_since_last_sr = u32::try_from(delay).unwrap_or(u32::MAX);
        }
        block
    }

    /// RFC 3550 A.1 `init_seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = i64::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD as u32 + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.history = 1;
    }

    /// RFC 3550 A.1 `update_seq`, plus duplicate detection.
    fn update_seq(&mut self, seq: u16) -> SeqVerdict {
        if !self.started {
            self.started = true;
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    // Count every packet of the probation run, not just this one.
                    let run = MIN_SEQUENTIAL - 1;
                    self.base_seq -= i64::from(run);
                    self.received = u64::from(MIN_SEQUENTIAL);
                    self.history = (1u128 << MIN_SEQUENTIAL) - 1;
                    return SeqVerdict::Counted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Held;
        }
        let mut verdict = SeqVerdict::Counted;
        if udelta < MAX_DROPOUT {
            if udelta == 0 {
                self.duplicates += 1;
            } else {
                if seq < self.max_seq {
                    self.cycles += RTP_SEQ_MOD;
                }
                self.max_seq = seq;
                self.history = self.history.checked_shl(u32::from(udelta)).unwrap_or(0) | 1;
            }
        } else if u64::from(udelta) <= RTP_SEQ_MOD - u64::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a big jump: the sender restarted.
                self.init_seq(seq);
                self.resyncs += 1;
                verdict = SeqVerdict::Restarted;
            } else {
                self.bad_seq = u32::from(seq.wrapping_add(1));
                return SeqVerdict::Rejected;
            }
        } else {
            // Duplicate or reordered packet.
            let back = self.max_seq.wrapping_sub(seq);
            if back < HISTORY {
                let bit = 1u128 << back;
                if self.history & bit != 0 {
                    self.duplicates += 1;
                }
                self.history |= bit;
            }
        }
        self.received += 1;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    // Tests need an origin instant; only differences from it matter.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    const PTIME: Duration = Duration::from_millis(20);

    /// Feeds `seqs` at 20 ms spacing, timestamps following the sequence numbers (160 per step).
    fn feed(stats: &mut StreamStats, origin: Instant, seqs: &[u16]) {
        for (i, &s) in seqs.iter().enumerate() {
            let arrival = origin + PTIME * i as u32;
            stats.record(arrival, s, u32::from(s).wrapping_mul(160), 172);
        }
    }

    #[test]
    fn clean_stream_counts_every_packet() {
        let mut s = StreamStats::new(8000);
        let seqs: Vec<u16> = (1000..1100).collect();
        feed(&mut s, t0(), &seqs);
        assert_eq!(s.packets(), 100);
        assert_eq!(s.bytes(), 17_200);
        assert_eq!(s.expected(), 100);
        assert_eq!(s.received(), 100);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.extended_highest_sequence(), 1099);
        assert_eq!(s.take_fraction_lost(), 0);
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn nothing_expected_during_probation() {
        let mut s = StreamStats::new(8000);
        feed(&mut s, t0(), &[5]);
        assert_eq!((s.packets(), s.expected(), s.lost()), (1, 0, 0));
    }

    #[test]
    fn loss_is_counted_across_the_wrap() {
        let mut s = StreamStats::new(8000);
        // 65530..=65535, 0..=9 with 65534, 1 and 2 missing.
        let seqs: Vec<u16> = (65530..=65535)
            .chain(0..10)
            .filter(|s| ![65534, 1, 2].contains(s))
            .collect();
        feed(&mut s, t0(), &seqs);
        assert_eq!(s.expected(), 16);
        assert_eq!(s.received(), 13);
        assert_eq!(s.lost(), 3);
        assert_eq!(s.extended_highest_sequence(), 0x0001_0009);
        assert_eq!(s.take_fraction_lost(), (3 * 256 / 16) as u8);
        assert_eq!(
            s.take_fraction_lost(),
            0,
            "interval restarts after each take"
        );
    }

    #[test]
    fn probation_straddling_the_wrap() {
        let mut s = StreamStats::new(8000);
        feed(&mut s, t0(), &[65535, 0, 1]);
        assert_eq!((s.expected(), s.received(), s.lost()), (3, 3, 0));
    }

    #[test]
    fn reordering_is_not_loss() {
        let mut s = StreamStats::new(8000);
        feed(&mut s, t0(), &[10, 11, 12, 14, 13, 15, 17, 16, 18]);
        assert_eq!(s.expected(), 9);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.duplicates(), 0);
        assert_eq!(s.extended_highest_sequence(), 18);
    }

    #[test]
    fn duplicates_make_cumulative_loss_negative() {
        let mut s = StreamStats::new(8000);
        feed(&mut s, t0(), &[1, 2, 3, 3, 2, 4, 4]);
        assert_eq!(s.duplicates(), 3);
        assert_eq!(s.expected(), 4);
        assert_eq!(s.received(), 7);
        assert_eq!(s.cumulative_lost(), -3);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.take_fraction_lost(), 0);
        assert_eq!(s.report_block(9).cumulative_lost, -3);
    }

    #[test]
    fn a_big_jump_resyncs_on_the_second_packet() {
        let mut s = StreamStats::new(8000);
        feed(&mut s, t0(), &[1, 2, 3, 40_000]);
        assert_eq!(s.expected(), 3, "a lone jump is held back");
        assert_eq!(s.resyncs(), 0);
        feed(&mut s, t0(), &[40_001, 40_002]);
        assert_eq!(s.resyncs(), 1);
        assert_eq!(s.expected(), 2);
        assert_eq!(s.received(), 2);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.extended_highest_sequence(), 40_002);
        assert_eq!(s.packets(), 6);
    }

    #[test]
    fn a_stray_jump_does_not_resync() {
        let mut s = StreamStats::new(8000);
        feed(&mut s, t0(), &[1, 2, 3, 40_000, 4, 5]);
        assert_eq!(s.resyncs(), 0);
        assert_eq!((s.expected(), s.received()), (5, 5));
    }

    #[test]
    fn jitter_is_zero_for_constant_delay() {
        let origin = t0();
        let mut s = StreamStats::new(8000);
        for i in 0..500u32 {
            let arrival = origin + Duration::from_millis(35) + PTIME * i;
            s.record(arrival, i as u16, 1234 + 160 * i, 172);
        }
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.jitter_seconds(), 0.0);
    }

    #[test]
    fn jitter_converges_to_alternating_delay() {
        // Delays alternate 0 and 10 ms: every |D| is 80 timestamp units at 8 kHz, so J -> 80.
        let origin = t0();
        let mut s = StreamStats::new(8000);
        for i in 0..1000u32 {
            let delay = if i % 2 == 0 { 0 } else { 10 };
            let arrival = origin + PTIME * i + Duration::from_millis(delay);
            s.record(arrival, i as u16, 160 * i, 172);
        }
        assert!((79..=80).contains(&s.jitter()), "jitter {}", s.jitter());
        assert!((s.jitter_seconds() - 0.010).abs() < 0.000_2);
    }

    #[test]
    fn jitter_first_step_is_a_sixteenth() {
        let origin = t0();
        let mut s = StreamStats::new(8000);
        s.record(origin, 0, 0, 0);
        // 160 units (20 ms) late relative to the first packet.
        s.record(origin + PTIME * 2, 1, 160, 0);
        assert_eq!(s.jitter(), 10);
    }

    #[test]
    fn report_block_carries_the_stats() {
        let origin = t0();
        let mut s = StreamStats::new(8000);
        let seqs: Vec<u16> = (0..100).filter(|s| s % 10 != 5).collect();
        feed(&mut s, origin, &seqs);
        let b = s.report_block(0xabcd);
        assert_eq!(b.ssrc, 0xabcd);
        assert_eq!(b.cumulative_lost, 10);
        assert_eq!(b.fraction_lost, (10 * 256 / 100) as u8);
        assert_eq!(b.highest_seq, 99);
        assert_eq!((b.last_sr, b.delay_since_last_sr), (0, 0));
        assert_eq!(s.report_block(0xabcd).fraction_lost, 0);

        s.record_sender_report(origin, 0x1122_3344_5566_7788);
        let b = s.report_block_at(0xabcd, origin + Duration::from_millis(500));
        assert_eq!(b.last_sr, 0x3344_5566);
        assert_eq!(b.delay_since_last_sr, 32768);
    }

    proptest! {
        /// Any sequence of arrivals keeps the accounting consistent and never panics.
        #[test]
        fn accounting_is_consistent(seqs in proptest::collection::vec(any::<u16>(), 0..300)) {
            let mut s = StreamStats::new(8000);
            feed(&mut s, t0(), &seqs);
            prop_assert_eq!(s.packets(), seqs.len() as u64);
            prop_assert!(s.received() <= s.packets());
            // Loss is what was expected and did not arrive, so never more than was expected.
            prop_assert!(s.lost() <= s.expected());
            prop_assert!(s.take_fraction_lost() == 0 || s.lost() > 0 || s.resyncs() > 0);
        }

        /// A run with random gaps (each below MAX_DROPOUT) loses exactly the gaps.
        #[test]
        fn gaps_are_lost(start: u16, gaps in proptest::collection::vec(0u16..50, 2..200)) {
            let mut s = StreamStats::new(8000);
            // Probation needs two sequential packets first.
            let mut seqs = vec![start, start.wrapping_add(1)];
            let mut seq = start.wrapping_add(1);
            let mut missing = 0u64;
            for g in gaps {
                seq = seq.wrapping_add(g + 1);
                missing += u64::from(g);
                seqs.push(seq);
            }
            feed(&mut s, t0(), &seqs);
            prop_assert_eq!(s.lost(), missing);
            prop_assert_eq!(s.expected(), seqs.len() as u64 + missing);
        }
    }
}
