//! H.265: HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3) from
//! VPS/SPS/PPS NAL units and back.

use bytes::{BufMut, Bytes, BytesMut};

use super::{read_units, unescape_rbsp, BitReader, CodecError};

/// H.265 NAL unit types the relay cares about.
pub const H265_NAL_VPS: u8 = 32;
pub const H265_NAL_SPS: u8 = 33;
pub const H265_NAL_PPS: u8 = 34;
pub const H265_NAL_AUD: u8 = 35;
pub const H265_NAL_FILLER: u8 = 38;

/// The `nal_unit_type` of an H.265 NAL unit (0 for an empty one).
pub fn h265_nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3F)
}

/// An IRAP picture (BLA, IDR, CRA: types 16..=23), where decoding can start.
pub fn h265_is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// What the record needs from the first SPS.
struct SpsInfo {
    /// general_profile_space .. general_level_idc (12 bytes).
    ptl: [u8; 12],
    max_sub_layers: u8,
    temporal_id_nested: bool,
    chroma_format: u8,
    luma_depth_minus8: u8,
    chroma_depth_minus8: u8,
}

fn parse_sps(sps: &[u8]) -> Result<SpsInfo, CodecError> {
    let rbsp = unescape_rbsp(sps);
    // 2-byte NAL header, then vps_id(4) max_sub_layers_minus1(3) nesting(1).
    let b = *rbsp.get(2).ok_or(CodecError::Truncated)?;
    let ptl: [u8; 12] = rbsp
        .get(3..15)
        .and_then(|s| s.try_into().ok())
        .ok_or(CodecError::Truncated)?;
    let sub_layers_minus1 = u32::from((b >> 1) & 7);
    let mut r = BitReader::new(&rbsp, 15 * 8);
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    for i in 0..sub_layers_minus1 as usize {
        profile_present[i] = r.bit()? == 1;
        level_present[i] = r.bit()? == 1;
    }
    if sub_layers_minus1 > 0 {
        r.skip(2 * (8 - sub_layers_minus1 as usize))?;
    }
    for i in 0..sub_layers_minus1 as usize {
        if profile_present[i] {
            r.skip(88)?;
        }
        if level_present[i] {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma = r.ue()?;
    if chroma == 3 {
        r.bit()?; // separate_colour_plane_flag
    }
    r.ue()?; // pic_width_in_luma_samples
    r.ue()?; // pic_height_in_luma_samples
    if r.bit()? == 1 {
        for _ in 0..4 {
            r.ue()?; // conformance window offsets
        }
    }
    let luma = r.ue()?;
    let chroma_depth = r.ue()?;
    if chroma > 3 || luma > 7 || chroma_depth > 7 {
        return Err(CodecError::Malformed("SPS format out of range"));
    }
    Ok(SpsInfo {
        ptl,
        max_sub_layers: sub_layers_minus1 as u8 + 1,
        temporal_id_nested: b & 1 == 1,
        chroma_format: chroma as u8,
        luma_depth_minus8: luma as u8,
        chroma_depth_minus8: chroma_depth as u8,
    })
}

/// An HEVCDecoderConfigurationRecord (4-byte NAL lengths) from VPS, SPS and
/// PPS NAL units (headers included, no start codes). Profile, tier, level,
/// chroma format and bit depths come from the first SPS, which must parse.
pub fn hevc_record(vps: &[&[u8]], sps: &[&[u8]], pps: &[&[u8]]) -> Result<Bytes, CodecError> {
    let first = sps.first().ok_or(CodecError::Malformed("no SPS"))?;
    if vps.is_empty() || pps.is_empty() {
        return Err(CodecError::Malformed("no VPS or PPS"));
    }
    let info = parse_sps(first)?;
    let arrays = [
        (H265_NAL_VPS, vps),
        (H265_NAL_SPS, sps),
        (H265_NAL_PPS, pps),
    ];
    let mut size = 23;
    for (_, units) in &arrays {
        if units.len() > 0xFFFF || units.iter().any(|u| u.is_empty() || u.len() > 0xFFFF) {
            return Err(CodecError::Malformed("parameter set size"));
        }
        size += 3 + units.iter().map(|u| u.len() + 2).sum::<usize>();
    }
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(1);
    out.put_slice(&info.ptl);
    out.put_u16(0xF000); // min_spatial_segmentation_idc = 0
    out.put_u8(0xFC); // parallelismType = 0 (unknown)
    out.put_u8(0xFC | info.chroma_format);
    out.put_u8(0xF8 | info.luma_depth_minus8);
    out.put_u8(0xF8 | info.chroma_depth_minus8);
    out.put_u16(0); // avgFrameRate unknown
    out.put_u8((info.max_sub_layers << 3) | (u8::from(info.temporal_id_nested) << 2) | 3);
    out.put_u8(arrays.len() as u8);
    for (nal_type, units) in arrays {
        out.put_u8(0x80 | nal_type); // array_completeness = 1
        out.put_u16(units.len() as u16);
        for u in units {
            out.put_u16(u.len() as u16);
            out.put_slice(u);
        }
    }
    Ok(out.freeze())
}

/// All NAL units of an HEVCDecoderConfigurationRecord, in record order
/// (usually VPS, SPS, PPS, then SEI). Lenient: a damaged record yields the
/// units read before the damage.
pub fn hevc_record_parameter_sets(record: &[u8]) -> Vec<Bytes> {
    let mut units = Vec::new();
    let Some(mut rest) = record.get(22..) else {
        return units;
    };
    let Some((&arrays, tail)) = rest.split_first() else {
        return units;
    };
    rest = tail;
    for _ in 0..arrays {
        let Some((head, tail)) = rest.split_first_chunk::<3>() else {
            break;
        };
        rest = tail;
        let count = usize::from(u16::from_be_bytes([head[1], head[2]]));
        if !read_units(&mut rest, count, &mut units) {
            break;
        }
    }
    units
}
