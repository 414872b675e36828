//! The media the encoders publish: FLV (RTMP) and MPEG-TS (SRT) files made
//! once by `scripts/loadtest-fixtures.sh`, loaded once into memory and
//! shared by every encoder (`Bytes` slices of one buffer: publishing never
//! re-encodes media, and copies only the TS chunks of later laps).
//!
//! Both files are 10 s long and loop; each loop is shifted by the file's
//! duration so a feed's timestamps only ever go forward, and TS laps carry
//! on the continuity counters so the seam does not look like packet loss.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;

/// Which fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// 720p30, ~2.65 Mbit/s, 1 s GOP.
    Hd,
    /// 360p30, ~500 kbit/s, 1 s GOP.
    Sd,
}

impl Quality {
    fn name(self) -> &'static str {
        match self {
            Quality::Hd => "hd",
            Quality::Sd => "sd",
        }
    }
}

/// One FLV tag of the file.
#[derive(Debug, Clone)]
pub struct FlvTag {
    /// 8 audio, 9 video, 18 script data.
    pub kind: u8,
    pub ts: u32,
    pub body: Bytes,
}

impl FlvTag {
    pub fn is_video_keyframe(&self) -> bool {
        self.kind == 9 && self.body.first().is_some_and(|b| b >> 4 == 1)
    }

    /// A codec configuration (AVC sequence header or AAC config).
    pub fn is_config(&self) -> bool {
        (self.kind == 8 || self.kind == 9) && self.body.get(1) == Some(&0)
    }
}

/// An FLV file as tags.
#[derive(Debug)]
pub struct FlvFixture {
    pub tags: Vec<FlvTag>,
    /// Loop length in ms (last timestamp + one frame).
    pub duration_ms: u32,
    /// Bits per second of media in the file.
    pub bitrate: f64,
}

/// A TS file as 1316-byte chunks (7 packets) with their send time.
#[derive(Debug)]
pub struct TsFixture {
    pub packets: Bytes,
    /// (ms since the start, byte offset of a 7-packet chunk).
    pub chunks: Vec<(u32, usize)>,
    pub duration_ms: u32,
    /// Per PID: its continuity counter's advance over the file (mod 16).
    pub cc_steps: Vec<(u16, u8)>,
}

/// Both files of one quality.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub flv: Arc<FlvFixture>,
    pub ts: Arc<TsFixture>,
}

/// The fixture folder: `PRIMACY_LOADTEST_FIXTURES` or `loadtest/fixtures`
/// beside this crate.
pub fn default_dir() -> PathBuf {
    std::env::var_os("PRIMACY_LOADTEST_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

/// Make the fixtures when missing (runs the script), then load one quality.
pub fn load(dir: &Path, q: Quality) -> Result<Fixture> {
    let flv = dir.join(format!("{}.flv", q.name()));
    let ts = dir.join(format!("{}.ts", q.name()));
    if !flv.exists() || !ts.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scripts")
            .join("loadtest-fixtures.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .status()
            .with_context(|| format!("run {}", script.display()))?;
        if !status.success() {
            bail!(
                "{} failed ({status}); is ffmpeg installed?",
                script.display()
            );
        }
    }
    let flv = parse_flv(Bytes::from(
        std::fs::read(&flv).with_context(|| format!("read {}", flv.display()))?,
    ))?;
    let ts = parse_ts(Bytes::from(
        std::fs::read(&ts).with_context(|| format!("read {}", ts.display()))?,
    ))?;
    Ok(Fixture {
        flv: Arc::new(flv),
        ts: Arc::new(ts),
    })
}

/// Split an FLV file into tags (header, then tag + previous-tag-size pairs).
pub fn parse_flv(data: Bytes) -> Result<FlvFixture> {
    if data.len() < 13 || &data[..3] != b"FLV" {
        bail!("not an FLV file");
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut pos = header_len + 4;
    let mut tags = Vec::new();
    let mut bytes = 0usize;
    while pos + 11 <= data.len() {
        let kind = data[pos] & 0x1f;
        let size = u32::from_be_bytes([0, data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let ts = u32::from_be_bytes([data[pos + 7], data[pos + 4], data[pos + 5], data[pos + 6]]);
        let start = pos + 11;
        if start + size > data.len() {
            break; // a truncated last tag
        }
        if size > 0 {
            bytes += size;
            tags.push(FlvTag {
                kind,
                ts,
                body: data.slice(start..start + size),
            });
        }
        pos = start + size + 4;
    }
    let last = tags
        .iter()
        .filter(|t| t.kind == 9)
        .map(|t| t.ts)
        .max()
        .unwrap_or(0);
    if last == 0 {
        bail!("the FLV file has no video");
    }
    let duration_ms = last + 33;
    // The encoder's audio runs on past the last video frame (here ~80 ms).
    // Sent at their times, those tags would hold the next lap's first
    // keyframe back by as much, a freeze of the encoder's own at every
    // seam; a lap ends where its video does.
    tags.retain(|t| t.ts < duration_ms);
    Ok(FlvFixture {
        tags,
        duration_ms,
        bitrate: bytes as f64 * 8.0 * 1000.0 / f64::from(duration_ms),
    })
}

/// The PTS/DTS (33 bits, 90 kHz) coded at `b[0..5]`.
fn read_ts33(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1) & 0x07) << 30
        | u64::from(b[1]) << 22
        | (u64::from(b[2]) >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4]) >> 1
}

fn write_ts33(b: &mut [u8], v: u64) {
    let v = v & ((1 << 33) - 1);
    b[0] = (b[0] & 0xf1) | (((v >> 30) as u8 & 0x07) << 1) | 1;
    b[1] = (v >> 22) as u8;
    b[2] = (((v >> 15) as u8) << 1) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = ((v as u8) << 1) | 1;
}

/// Where a TS packet's PES header timestamps are: (pts offset, dts offset).
fn pes_times(pkt: &[u8]) -> Option<(Option<usize>, Option<usize>, u8)> {
    if pkt[1] & 0x40 == 0 {
        return None; // not a payload start
    }
    let afc = (pkt[3] >> 4) & 3;
    let mut p = 4;
    if afc & 2 != 0 {
        p += 1 + pkt[4] as usize;
    }
    if afc & 1 == 0 || p + 14 > 188 {
        return None;
    }
    let pes = &pkt[p..];
    if pes[0] != 0 || pes[1] != 0 || pes[2] != 1 {
        return None;
    }
    let sid = pes[3];
    let flags = pes[7];
    let pts = (flags & 0x80 != 0).then_some(p + 9);
    let dts = (flags & 0x40 != 0).then_some(p + 14);
    Some((pts, dts, sid))
}

/// Packets and their send times, from the video PES timestamps.
pub fn parse_ts(data: Bytes) -> Result<TsFixture> {
    if data.len() < 188 * 7 || data[0] != 0x47 {
        bail!("not an MPEG-TS file");
    }
    let n = data.len() / 188;
    let mut first: Option<u64> = None;
    let mut now_ms = 0u32;
    let mut chunks = Vec::with_capacity(n / 7 + 1);
    let mut max_ms = 0;
    for i in 0..n {
        let pkt = &data[i * 188..(i + 1) * 188];
        if let Some((pts, dts, sid)) = pes_times(pkt) {
            if (0xe0..=0xef).contains(&sid) {
                if let Some(off) = dts.or(pts) {
                    let t = read_ts33(&pkt[off..off + 5]);
                    let base = *first.get_or_insert(t);
                    now_ms = (t.saturating_sub(base) / 90) as u32;
                    max_ms = max_ms.max(now_ms);
                }
            }
        }
        // A chunk goes out when its newest video PES is due (a live
        // encoder sends a frame's packets once it has the frame): timed by
        // the header before it instead, a chunk holding the start of frame
        // k+1 would go out a frame early, and frames would arrive in pairs.
        if i % 7 == 6 || i + 1 == n {
            chunks.push((now_ms, i / 7 * 7 * 188));
        }
    }
    Ok(TsFixture {
        cc_steps: cc_steps(&data[..n * 188]),
        packets: data.slice(..n * 188),
        chunks,
        duration_ms: max_ms + 33,
    })
}

impl TsFixture {
    /// The 7-packet chunk at `off..end` as a looping encoder sends it on lap
    /// `lap`: every PTS, DTS and PCR moved `shift_ms` later and the
    /// continuity counters continued from the previous lap, so that the
    /// file's end and start join like a live stream instead of looking like
    /// lost packets. Lap 0 unshifted is the file itself (no copy); otherwise
    /// one chunk is copied, so no lap costs a whole-file copy at once.
    pub fn chunk(&self, off: usize, end: usize, lap: u64, shift_ms: u64) -> Bytes {
        if lap == 0 && shift_ms == 0 {
            return self.packets.slice(off..end);
        }
        let mut out = self.packets[off..end].to_vec();
        let d90 = shift_ms * 90;
        for pkt in out.chunks_exact_mut(188) {
            let pid = u16::from(pkt[1] & 0x1f) << 8 | u16::from(pkt[2]);
            if let Some(&(_, step)) = self.cc_steps.iter().find(|(p, _)| *p == pid) {
                let add = ((lap % 16) as u8).wrapping_mul(step);
                pkt[3] = (pkt[3] & 0xf0) | ((pkt[3] & 0x0f).wrapping_add(add) & 0x0f);
            }
            let afc = (pkt[3] >> 4) & 3;
            if d90 != 0 && afc & 2 != 0 && pkt[4] >= 7 && pkt[5] & 0x10 != 0 {
                let b = &mut pkt[6..12];
                let base = u64::from(b[0]) << 25
                    | u64::from(b[1]) << 17
                    | u64::from(b[2]) << 9
                    | u64::from(b[3]) << 1
                    | u64::from(b[4]) >> 7;
                let nb = (base + d90) & ((1 << 33) - 1);
                b[0] = (nb >> 25) as u8;
                b[1] = (nb >> 17) as u8;
                b[2] = (nb >> 9) as u8;
                b[3] = (nb >> 1) as u8;
                b[4] = (b[4] & 0x7f) | (((nb & 1) as u8) << 7);
            }
            if d90 != 0 {
                if let Some((pts, dts, _)) = pes_times(pkt) {
                    for off in [pts, dts].into_iter().flatten() {
                        let v = read_ts33(&pkt[off..off + 5]);
                        write_ts33(&mut pkt[off..off + 5], v + d90);
                    }
                }
            }
        }
        Bytes::from(out)
    }
}

/// Per PID with payload packets, how far its continuity counter advances
/// over the whole file (mod 16): lap `n` adds `n ×` that to every counter.
fn cc_steps(data: &[u8]) -> Vec<(u16, u8)> {
    // (pid, first cc, last cc)
    let mut seen: Vec<(u16, u8, u8)> = Vec::new();
    for pkt in data.chunks_exact(188) {
        if pkt[0] != 0x47 || (pkt[3] >> 4) & 1 == 0 {
            continue; // no payload: the counter does not advance
        }
        let pid = u16::from(pkt[1] & 0x1f) << 8 | u16::from(pkt[2]);
        let cc = pkt[3] & 0x0f;
        match seen.iter_mut().find(|(p, _, _)| *p == pid) {
            Some(e) => e.2 = cc,
            None => seen.push((pid, cc, cc)),
        }
    }
    seen.into_iter()
        .map(|(pid, first, last)| (pid, last.wrapping_add(1).wrapping_sub(first) & 0x0f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_continue_the_continuity_counters() {
        // PID 0x100: payload packets with counters 5, 6, 7 and one
        // adaptation-only packet (does not advance); PID 0: counter 0.
        let mut f = Vec::new();
        for (pid, afc_cc) in [
            (0x100u16, 0x15u8),
            (0x100, 0x16),
            (0, 0x10),
            (0x100, 0x27),
            (0x100, 0x17),
        ] {
            let mut pkt = vec![0xffu8; 188];
            pkt[0] = 0x47;
            pkt[1] = (pid >> 8) as u8;
            pkt[2] = pid as u8;
            pkt[3] = afc_cc;
            pkt[4] = 0; // (adaptation length where there is one)
            f.extend_from_slice(&pkt);
        }
        let data = Bytes::from(f);
        let fx = TsFixture {
            cc_steps: cc_steps(&data),
            packets: data,
            chunks: vec![(0, 0)],
            duration_ms: 33,
        };
        assert_eq!(fx.cc_steps, vec![(0x100, 3), (0, 1)]);
        let cc = |b: &Bytes| b.chunks(188).map(|p| p[3] & 0x0f).collect::<Vec<_>>();
        assert_eq!(cc(&fx.chunk(0, 5 * 188, 0, 0)), vec![5, 6, 0, 7, 7]);
        // Lap 1 starts where lap 0 ended (8 after 7; 1 after 0).
        assert_eq!(cc(&fx.chunk(0, 5 * 188, 1, 0)), vec![8, 9, 1, 10, 10]);
        // Lap 6 wraps mod 16: 5 + 18 = 23 → 7.
        assert_eq!(cc(&fx.chunk(0, 188, 6, 0)), vec![7]);
    }

    #[test]
    fn ts33_round_trip() {
        let mut b = [0x21u8, 0, 1, 0, 1];
        for v in [0u64, 1, 90_000, (1 << 33) - 1, 123_456_789] {
            write_ts33(&mut b, v);
            assert_eq!(read_ts33(&b), v);
            assert_eq!(b[0] & 0xf0, 0x20, "the prefix bits are kept");
        }
    }

    #[test]
    fn flv_tags_are_split() {
        let mut f = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (kind, ts, body) in [
            (9u8, 0u32, &[0x17u8, 0, 0, 0, 0][..]),
            (9, 1000, &[0x17, 1, 0, 0, 0, 9]),
            (8, 1040, &[0xaf, 1, 0x21]), // audio past the last video: cut
        ] {
            f.push(kind);
            f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(&ts.to_be_bytes()[1..]);
            f.push((ts >> 24) as u8);
            f.extend_from_slice(&[0, 0, 0]);
            f.extend_from_slice(body);
            f.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        }
        let fx = parse_flv(Bytes::from(f)).unwrap();
        assert_eq!(fx.tags.len(), 2);
        assert!(fx.tags[0].is_config() && fx.tags[1].is_video_keyframe());
        assert_eq!(fx.duration_ms, 1033);
        assert!(parse_flv(Bytes::from_static(b"nope")).is_err());
    }
}
