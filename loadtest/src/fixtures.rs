//! The media the encoders publish: FLV (RTMP) and MPEG-TS (SRT) files made
//! once by `scripts/loadtest-fixtures.sh`, loaded once into memory and
//! shared by every encoder (`Bytes` slices of one buffer: publishing never
//! copies or re-encodes media).
//!
//! Both files are 10 s long and loop; each loop is shifted by the file's
//! duration so a feed's timestamps only ever go forward.

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
        if i % 7 == 0 {
            chunks.push((now_ms, i * 188));
        }
    }
    Ok(TsFixture {
        packets: data.slice(..n * 188),
        chunks,
        duration_ms: max_ms + 33,
    })
}

impl TsFixture {
    /// The packets with every PTS, DTS and PCR moved `shift_ms` later: the
    /// copy a looping encoder sends on its next lap (one copy per lap, not
    /// per frame).
    pub fn shifted(&self, shift_ms: u64) -> Bytes {
        if shift_ms == 0 {
            return self.packets.clone();
        }
        let mut out = self.packets.to_vec();
        let d90 = shift_ms * 90;
        for pkt in out.chunks_exact_mut(188) {
            let afc = (pkt[3] >> 4) & 3;
            if afc & 2 != 0 && pkt[4] >= 7 && pkt[5] & 0x10 != 0 {
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
            if let Some((pts, dts, _)) = pes_times(pkt) {
                for off in [pts, dts].into_iter().flatten() {
                    let v = read_ts33(&pkt[off..off + 5]);
                    write_ts33(&mut pkt[off..off + 5], v + d90);
                }
            }
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
