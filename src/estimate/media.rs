//! Inline media → tokens, as Google counts them: images by the size in their PNG, JPEG, GIF or
//! WebP header (258 tokens a 768x768 tile), PDFs by their pages, audio and video by their
//! seconds (from a WAV header, else an assumed bitrate), all from a decoded prefix of the
//! base64 data, never the whole file.

use base64::Engine;

use super::CHARS_PER_TOKEN;

/// Google: an image with both sides <= 384 px is 258 tokens; larger ones 258 per 768x768 tile.
pub(super) const IMAGE_TILE_TOKENS: u64 = 258;
/// Google: 258 tokens a PDF page.
const PDF_PAGE_TOKENS: u64 = 258;
/// Google: 32 tokens a second of audio, 263 a second of video.
const AUDIO_TOKENS_PER_SEC: u64 = 32;
const VIDEO_TOKENS_PER_SEC: u64 = 263;
/// When a compressed audio or video duration cannot be read from its header, assume these
/// bitrates (64 kbit/s audio, 1 Mbit/s video) to turn its size into seconds.
const ASSUMED_AUDIO_BYTES_PER_SEC: u64 = 8_000;
const ASSUMED_VIDEO_BYTES_PER_SEC: u64 = 125_000;
/// Size in bytes of base64 data without decoding it.
pub(crate) fn decoded_len(b64: &str) -> u64 {
    let trimmed = b64.trim_end_matches('=');
    (trimmed.len() as u64 * 3) / 4
}

/// Decode at most `max_chars` of base64 (rounded to whole groups). Bad base64 gives nothing.
pub(crate) fn decode_prefix(b64: &str, max_chars: usize) -> Vec<u8> {
    let take = b64.len().min(max_chars) / 4 * 4;
    let prefix = b64.get(..take).unwrap_or("");
    base64::engine::general_purpose::STANDARD
        .decode(prefix.trim_end_matches('='))
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(prefix.trim_end_matches('='))
        })
        .unwrap_or_default()
}

/// Tokens of one inline media part, by Google's published rules.
pub fn media_tokens(mime: &str, b64: &str) -> u64 {
    let mime = mime.to_ascii_lowercase();
    let bytes = decoded_len(b64);
    if mime.starts_with("image/") {
        let head = decode_prefix(b64, 96 * 1024);
        match image_size(&head) {
            Some((w, h)) => image_tokens(w, h),
            None => IMAGE_TILE_TOKENS,
        }
    } else if mime == "application/pdf" {
        let data = decode_prefix(b64, usize::MAX);
        pdf_pages(&data).max(1).saturating_mul(PDF_PAGE_TOKENS)
    } else if mime.starts_with("audio/") {
        let head = decode_prefix(b64, 64);
        let secs = wav_seconds(&head, bytes)
            .unwrap_or_else(|| bytes.div_ceil(ASSUMED_AUDIO_BYTES_PER_SEC));
        secs.max(1).saturating_mul(AUDIO_TOKENS_PER_SEC)
    } else if mime.starts_with("video/") {
        bytes
            .div_ceil(ASSUMED_VIDEO_BYTES_PER_SEC)
            .max(1)
            .saturating_mul(VIDEO_TOKENS_PER_SEC)
    } else {
        // Text-like inline data (text/plain, application/json, code): four bytes a token.
        bytes.div_ceil(CHARS_PER_TOKEN)
    }
}

/// 258 tokens when both sides are at most 384 px, else 258 per 768x768 tile.
pub fn image_tokens(w: u32, h: u32) -> u64 {
    if w <= 384 && h <= 384 {
        IMAGE_TILE_TOKENS
    } else {
        u64::from(w.div_ceil(768).max(1)) * u64::from(h.div_ceil(768).max(1)) * IMAGE_TILE_TOKENS
    }
}

/// Width and height from a PNG, GIF, WebP or JPEG header.
pub(crate) fn image_size(d: &[u8]) -> Option<(u32, u32)> {
    let be32 =
        |i: usize| -> Option<u32> { Some(u32::from_be_bytes(d.get(i..i + 4)?.try_into().ok()?)) };
    let le16 = |i: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes(
            d.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    let be16 = |i: usize| -> Option<u32> {
        Some(u32::from(u16::from_be_bytes(
            d.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    if d.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some((be32(16)?, be32(20)?));
    }
    if d.starts_with(b"GIF8") {
        return Some((le16(6)?, le16(8)?));
    }
    if d.len() >= 30 && &d[0..4] == b"RIFF" && &d[8..12] == b"WEBP" {
        return match &d[12..16] {
            b"VP8X" => {
                let w = u32::from_le_bytes([d[24], d[25], d[26], 0]) + 1;
                let h = u32::from_le_bytes([d[27], d[28], d[29], 0]) + 1;
                Some((w, h))
            }
            b"VP8 " => Some((le16(26)? & 0x3fff, le16(28)? & 0x3fff)),
            b"VP8L" => {
                let b = u32::from_le_bytes(d.get(21..25)?.try_into().ok()?);
                Some(((b & 0x3fff) + 1, ((b >> 14) & 0x3fff) + 1))
            }
            _ => None,
        };
    }
    if d.starts_with(&[0xff, 0xd8]) {
        let mut i = 2;
        while i + 9 < d.len() {
            if d[i] != 0xff {
                i += 1;
                continue;
            }
            let marker = d[i + 1];
            if marker == 0xff {
                i += 1;
                continue;
            }
            // Start-of-frame markers (not DHT c4, JPG c8, DAC cc) hold the size.
            if (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
                return Some((be16(i + 7)?, be16(i + 5)?));
            }
            let len = be16(i + 2)? as usize;
            i += 2 + len;
        }
    }
    None
}

/// Pages of a PDF: `/Type /Page` objects (not `/Pages`). Compressed object streams hide them,
/// in which case the caller counts one page.
pub(crate) fn pdf_pages(d: &[u8]) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while let Some(pos) = find(&d[i..], b"/Type") {
        let mut j = i + pos + 5;
        while j < d.len() && d[j].is_ascii_whitespace() {
            j += 1;
        }
        if d[j..].starts_with(b"/Page") && d.get(j + 5) != Some(&b's') {
            n += 1;
        }
        i = j;
    }
    n
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Duration of a PCM WAV file from its header.
pub(crate) fn wav_seconds(head: &[u8], total: u64) -> Option<u64> {
    if head.len() < 44 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let byte_rate = u64::from(u32::from_le_bytes(head[28..32].try_into().ok()?));
    if byte_rate == 0 {
        return None;
    }
    Some(total.saturating_sub(44).div_ceil(byte_rate))
}
