//! Codec glue between transport formats: H.264/H.265 Annex-B (start codes,
//! in-band parameter sets, as in MPEG-TS) ↔ AVCC/HVCC (4-byte length
//! prefixes plus a decoder configuration record, as in FLV and in
//! [`Frame`](super::Frame)), and AAC ADTS (as in MPEG-TS) ↔ raw AAC frames
//! plus an AudioSpecificConfig.
//!
//! Invariants:
//! - Every function is total: malformed input gives a [`CodecError`] (or, for
//!   the lenient splitters and record readers, whatever could be read), never
//!   a panic.
//! - `avcc_nal_units(annexb_to_avcc(x))` are the non-empty NAL units of `x`
//!   with trailing zero bytes removed; `annexb_to_avcc(avcc_to_annexb(y)) ==
//!   y` for every well-formed AVCC payload `y` of non-empty NAL units that do
//!   not end in a zero byte.
//! - `avc_record_parameter_sets(avc_record(sps, pps)) == (sps, pps)`, and the
//!   same for [`hevc_record`] / [`hevc_record_parameter_sets`].
//! - `parse_adts_header(adts_header(asc, n))` gives back `asc` (for AAC Main,
//!   LC, SSR and LTP configs with an indexed sampling frequency) and a frame
//!   of `7 + n` bytes.

use bytes::{BufMut, Bytes, BytesMut};

#[path = "codec_hevc.rs"]
mod hevc;

pub use hevc::{
    h265_is_irap, h265_nal_type, hevc_record, hevc_record_parameter_sets, H265_NAL_AUD,
    H265_NAL_FILLER, H265_NAL_PPS, H265_NAL_SPS, H265_NAL_VPS,
};

/// Why codec data could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("codec data truncated")]
    Truncated,
    #[error("malformed codec data: {0}")]
    Malformed(&'static str),
    #[error("unsupported codec feature: {0}")]
    Unsupported(&'static str),
}

// ---------------------------------------------------------------------------
// NAL units: Annex-B and AVCC.

/// The NAL units of an Annex-B byte stream (split on `00 00 01`, which also
/// covers 4-byte start codes). Leading bytes before the first start code are
/// ignored, trailing zero bytes of each unit are stripped and empty units are
/// skipped.
pub fn annexb_nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut units = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                push_unit(&mut units, &data[s..i]);
            }
            i += 3;
            start = Some(i);
        } else if data[i + 2] > 1 {
            // No start code can begin at i, i+1 or i+2.
            i += 3;
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        push_unit(&mut units, &data[s..]);
    }
    units
}

fn push_unit<'a>(units: &mut Vec<&'a [u8]>, unit: &'a [u8]) {
    let end = unit.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if end > 0 {
        units.push(&unit[..end]);
    }
}

/// NAL units as one AVCC/HVCC payload (each unit prefixed by its 4-byte
/// big-endian length).
pub fn nal_units_to_avcc<'a, I>(units: I) -> Bytes
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: Clone,
{
    let iter = units.into_iter();
    let size: usize = iter.clone().map(|u| u.len() + 4).sum();
    let mut out = BytesMut::with_capacity(size);
    for unit in iter {
        out.put_u32(u32::try_from(unit.len()).unwrap_or(u32::MAX));
        out.put_slice(unit);
    }
    out.freeze()
}

/// An Annex-B access unit as an AVCC/HVCC payload (all NAL units kept).
pub fn annexb_to_avcc(data: &[u8]) -> Bytes {
    nal_units_to_avcc(annexb_nal_units(data))
}

/// The NAL units of an AVCC/HVCC payload (4-byte lengths). Zero-length units
/// are skipped; a length running past the end is an error.
pub fn avcc_nal_units(data: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    let mut units = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (len, tail) = match rest.split_first_chunk::<4>() {
            Some((len, tail)) => (u32::from_be_bytes(*len) as usize, tail),
            None => return Err(CodecError::Truncated),
        };
        if len > tail.len() {
            return Err(CodecError::Truncated);
        }
        if len > 0 {
            units.push(&tail[..len]);
        }
        rest = &tail[len..];
    }
    Ok(units)
}

/// An AVCC/HVCC payload as Annex-B: every NAL unit behind a 4-byte start
/// code `00 00 00 01`. Parameter sets are not added (the muxer inserts them
/// before keyframes from [`avc_record_parameter_sets`]).
pub fn avcc_to_annexb(data: &[u8]) -> Result<Bytes, CodecError> {
    let units = avcc_nal_units(data)?;
    let mut out = BytesMut::with_capacity(data.len());
    for unit in units {
        out.put_slice(&[0, 0, 0, 1]);
        out.put_slice(unit);
    }
    Ok(out.freeze())
}

/// A NAL unit's payload with emulation-prevention bytes removed (`00 00 03`
/// → `00 00`): the RBSP, header included.
pub fn unescape_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// An MSB-first bit reader over an RBSP, with Exp-Golomb codes.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8], bit_pos: usize) -> Self {
        BitReader { data, pos: bit_pos }
    }

    pub(crate) fn bit(&mut self) -> Result<u32, CodecError> {
        let byte = self.data.get(self.pos / 8).ok_or(CodecError::Truncated)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, CodecError> {
        let mut v = 0u32;
        for _ in 0..n.min(32) {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        if end > self.data.len() * 8 {
            return Err(CodecError::Truncated);
        }
        self.pos = end;
        Ok(())
    }

    /// Unsigned Exp-Golomb `ue(v)`.
    pub(crate) fn ue(&mut self) -> Result<u32, CodecError> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(CodecError::Malformed("Exp-Golomb code too long"));
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }
}

// ---------------------------------------------------------------------------
// H.264 AVCDecoderConfigurationRecord.

/// H.264 NAL unit types the relay cares about.
pub const H264_NAL_IDR: u8 = 5;
pub const H264_NAL_SPS: u8 = 7;
pub const H264_NAL_PPS: u8 = 8;
pub const H264_NAL_AUD: u8 = 9;
pub const H264_NAL_FILLER: u8 = 12;

/// The `nal_unit_type` of an H.264 NAL unit (0 for an empty one).
pub fn h264_nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1F)
}

/// Chroma format and bit depths of an H.264 SPS (for the record's
/// high-profile extension).
fn h264_sps_format(sps: &[u8]) -> Result<(u32, u32, u32), CodecError> {
    let rbsp = unescape_rbsp(sps);
    let profile = *rbsp.get(1).ok_or(CodecError::Truncated)?;
    let mut r = BitReader::new(&rbsp, 32);
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma = r.ue()?;
        if chroma == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        let luma = r.ue()?;
        let chroma_depth = r.ue()?;
        if chroma > 3 || luma > 6 || chroma_depth > 6 {
            return Err(CodecError::Malformed("SPS format out of range"));
        }
        Ok((chroma, luma, chroma_depth))
    } else {
        Ok((1, 0, 0))
    }
}

/// An AVCDecoderConfigurationRecord (4-byte NAL lengths) from SPS and PPS
/// NAL units (headers included, no start codes). Profile and level come from
/// the first SPS; for the High profiles (100, 110, 122, 144) the chroma
/// format / bit depth extension is written when the SPS can be parsed.
pub fn avc_record(sps: &[&[u8]], pps: &[&[u8]]) -> Result<Bytes, CodecError> {
    let first = sps.first().ok_or(CodecError::Malformed("no SPS"))?;
    if first.len() < 4 {
        return Err(CodecError::Truncated);
    }
    if pps.is_empty() {
        return Err(CodecError::Malformed("no PPS"));
    }
    if sps.len() > 31 || pps.len() > 255 {
        return Err(CodecError::Malformed("too many parameter sets"));
    }
    let all = sps.iter().chain(pps.iter());
    if all.clone().any(|p| p.is_empty() || p.len() > 0xFFFF) {
        return Err(CodecError::Malformed("parameter set size"));
    }
    let mut out = BytesMut::with_capacity(16 + all.map(|p| p.len() + 2).sum::<usize>());
    out.put_slice(&[1, first[1], first[2], first[3], 0xFF]);
    out.put_u8(0xE0 | sps.len() as u8);
    for s in sps {
        out.put_u16(s.len() as u16);
        out.put_slice(s);
    }
    out.put_u8(pps.len() as u8);
    for p in pps {
        out.put_u16(p.len() as u16);
        out.put_slice(p);
    }
    if matches!(first[1], 100 | 110 | 122 | 144) {
        if let Ok((chroma, luma, chroma_depth)) = h264_sps_format(first) {
            out.put_u8(0xFC | chroma as u8);
            out.put_u8(0xF8 | luma as u8);
            out.put_u8(0xF8 | chroma_depth as u8);
            out.put_u8(0); // numOfSequenceParameterSetExt
        }
    }
    Ok(out.freeze())
}

/// The SPS and PPS NAL units of an AVCDecoderConfigurationRecord. Lenient:
/// a truncated or malformed record yields the parameter sets read before
/// the damage (both empty for garbage).
pub fn avc_record_parameter_sets(record: &[u8]) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut sps = Vec::new();
    let mut pps = Vec::new();
    if record.len() < 6 || record[0] != 1 {
        return (sps, pps);
    }
    let mut rest = &record[5..];
    let Some((&n, tail)) = rest.split_first() else {
        return (sps, pps);
    };
    rest = tail;
    if !read_units(&mut rest, usize::from(n & 0x1F), &mut sps) {
        return (sps, pps);
    }
    if let Some((&n, tail)) = rest.split_first() {
        rest = tail;
        read_units(&mut rest, usize::from(n), &mut pps);
    }
    (sps, pps)
}

/// Read `count` 16-bit-length-prefixed units; false when the data ran out.
pub(crate) fn read_units(rest: &mut &[u8], count: usize, out: &mut Vec<Bytes>) -> bool {
    for _ in 0..count {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if len > tail.len() {
            return false;
        }
        out.push(Bytes::copy_from_slice(&tail[..len]));
        *rest = &tail[len..];
    }
    true
}

// ---------------------------------------------------------------------------
// AAC: ADTS ↔ AudioSpecificConfig.

const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The sampling frequency for an MPEG-4 sampling frequency index (0..=12).
pub fn sampling_frequency(index: u8) -> Option<u32> {
    SAMPLE_RATES.get(usize::from(index)).copied()
}

/// A parsed ADTS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsHeader {
    /// MPEG-4 audio object type (ADTS profile + 1: 2 = AAC LC).
    pub audio_object_type: u8,
    pub sampling_index: u8,
    /// 0 means the channel layout is in a program config element in-band.
    pub channel_config: u8,
    /// 7, or 9 with a CRC.
    pub header_len: usize,
    /// Whole ADTS frame, header included.
    pub frame_len: usize,
    /// Raw data blocks in the frame (1..=4), 1024 samples each.
    pub raw_blocks: u8,
}

impl AdtsHeader {
    /// Sampling frequency in Hz (the index is validated by the parser).
    pub fn sample_rate(&self) -> u32 {
        sampling_frequency(self.sampling_index).unwrap_or(48000)
    }

    /// The 2-byte AudioSpecificConfig this header describes (GASpecificConfig
    /// with all flags zero).
    pub fn audio_specific_config(&self) -> [u8; 2] {
        let v = (u16::from(self.audio_object_type) << 11)
            | (u16::from(self.sampling_index) << 7)
            | (u16::from(self.channel_config) << 3);
        v.to_be_bytes()
    }
}

/// Parse the ADTS header at the start of `data` (needs at least the 7 or 9
/// header bytes; the frame body itself need not be present).
pub fn parse_adts_header(data: &[u8]) -> Result<AdtsHeader, CodecError> {
    let h: &[u8; 7] = data.first_chunk().ok_or(CodecError::Truncated)?;
    if h[0] != 0xFF || h[1] & 0xF0 != 0xF0 {
        return Err(CodecError::Malformed("no ADTS sync word"));
    }
    if h[1] & 0x06 != 0 {
        return Err(CodecError::Malformed("ADTS layer is not 0"));
    }
    let header_len = if h[1] & 1 == 1 { 7 } else { 9 };
    let sampling_index = (h[2] >> 2) & 0x0F;
    if sampling_frequency(sampling_index).is_none() {
        return Err(CodecError::Malformed("ADTS sampling frequency index"));
    }
    let frame_len =
        (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
    if data.len() < header_len {
        return Err(CodecError::Truncated);
    }
    if frame_len < header_len {
        return Err(CodecError::Malformed("ADTS frame length"));
    }
    Ok(AdtsHeader {
        audio_object_type: (h[2] >> 6) + 1,
        sampling_index,
        channel_config: ((h[2] & 1) << 2) | (h[3] >> 6),
        header_len,
        frame_len,
        raw_blocks: (h[6] & 0x03) + 1,
    })
}

/// A 7-byte ADTS header (no CRC, one raw data block) for a raw AAC frame of
/// `payload_len` bytes described by `asc`. HE-AAC configs with explicit SBR /
/// PS signalling use their core object type and sampling frequency. Errors
/// for object types ADTS cannot carry (above 4), an explicit (non-indexed)
/// sampling frequency, or a frame too long for the 13-bit length.
pub fn adts_header(asc: &[u8], payload_len: usize) -> Result<[u8; 7], CodecError> {
    let mut r = BitReader::new(asc, 0);
    let mut aot = read_object_type(&mut r)?;
    let sampling_index = r.bits(4)? as u8;
    if sampling_index == 15 {
        return Err(CodecError::Unsupported("explicit AAC sampling frequency"));
    }
    let channels = r.bits(4)? as u8;
    if aot == 5 || aot == 29 {
        // SBR / PS: extension sampling frequency, then the core object type.
        if r.bits(4)? == 15 {
            r.skip(24)?;
        }
        aot = read_object_type(&mut r)?;
    }
    if !(1..=4).contains(&aot) {
        return Err(CodecError::Unsupported(
            "AAC object type not expressible in ADTS",
        ));
    }
    if sampling_frequency(sampling_index).is_none() {
        return Err(CodecError::Malformed("AAC sampling frequency index"));
    }
    let len = payload_len
        .checked_add(7)
        .filter(|&l| l < 1 << 13)
        .ok_or(CodecError::Unsupported("AAC frame too long for ADTS"))?;
    Ok([
        0xFF,
        0xF1,
        ((aot - 1) << 6) | (sampling_index << 2) | (channels >> 2),
        ((channels & 3) << 6) | (len >> 11) as u8,
        (len >> 3) as u8,
        ((len & 7) << 5) as u8 | 0x1F,
        0xFC,
    ])
}

fn read_object_type(r: &mut BitReader<'_>) -> Result<u8, CodecError> {
    let aot = r.bits(5)? as u8;
    if aot == 31 {
        Ok(32 + r.bits(6)? as u8)
    } else {
        Ok(aot)
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
