//! Media the network carries (docs/rules.md §2): its kinds, the content types each takes and
//! the size each may reach, as the Cloud API limits them. A media file is sent by the id the
//! network gave it at upload, or by an http(s) link.

/// The kinds of media a message may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Document,
    Audio,
    Video,
    Sticker,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Document => "document",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Sticker => "sticker",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "image" => MediaKind::Image,
            "document" => MediaKind::Document,
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "sticker" => MediaKind::Sticker,
            _ => return None,
        })
    }

    /// The largest file of this kind, in bytes.
    pub fn max_bytes(self) -> u64 {
        const MB: u64 = 1024 * 1024;
        match self {
            MediaKind::Image => 5 * MB,
            MediaKind::Document => 100 * MB,
            MediaKind::Audio | MediaKind::Video => 16 * MB,
            MediaKind::Sticker => 500 * 1024,
        }
    }
}

/// The kind of media a content type is, when the network takes it.
pub fn kind_of_type(content_type: &str) -> Option<MediaKind> {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    Some(match t.as_str() {
        "image/jpeg" | "image/png" => MediaKind::Image,
        "image/webp" => MediaKind::Sticker,
        "audio/aac" | "audio/amr" | "audio/mpeg" | "audio/mp4" | "audio/ogg" => MediaKind::Audio,
        "video/mp4" | "video/3gpp" => MediaKind::Video,
        "text/plain"
        | "application/pdf"
        | "application/msword"
        | "application/vnd.ms-excel"
        | "application/vnd.ms-powerpoint"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            MediaKind::Document
        }
        _ => return None,
    })
}

/// Why a media file cannot travel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("content type {0:?} is not one the network takes")]
    UnsupportedType(String),
    #[error("the file is empty")]
    Empty,
    #[error("a {kind} may be at most {max} bytes; this one is {size}")]
    TooLarge {
        kind: &'static str,
        max: u64,
        size: u64,
    },
}

/// Checks a file of `content_type` and `size` bytes; its kind when the network takes it.
pub fn check(content_type: &str, size: u64) -> Result<MediaKind, MediaError> {
    let kind = kind_of_type(content_type)
        .ok_or_else(|| MediaError::UnsupportedType(content_type.to_owned()))?;
    if size == 0 {
        return Err(MediaError::Empty);
    }
    if size > kind.max_bytes() {
        return Err(MediaError::TooLarge {
            kind: kind.name(),
            max: kind.max_bytes(),
            size,
        });
    }
    Ok(kind)
}

/// A media id as the network issues them: 1 to 128 letters, digits, `.`, `-` and `_`.
pub fn valid_media_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_takes_its_types_up_to_its_size() {
        assert_eq!(check("image/png", 10), Ok(MediaKind::Image));
        assert_eq!(
            check("IMAGE/JPEG; charset=binary", 10),
            Ok(MediaKind::Image)
        );
        assert_eq!(
            check("application/pdf", 100 * 1024 * 1024),
            Ok(MediaKind::Document)
        );
        assert!(matches!(
            check("application/pdf", 100 * 1024 * 1024 + 1),
            Err(MediaError::TooLarge {
                kind: "document",
                ..
            })
        ));
        assert!(matches!(
            check("image/png", 5 * 1024 * 1024 + 1),
            Err(MediaError::TooLarge { kind: "image", .. })
        ));
        assert_eq!(check("image/webp", 500 * 1024), Ok(MediaKind::Sticker));
        assert_eq!(check("video/mp4", 1), Ok(MediaKind::Video));
        assert_eq!(check("audio/ogg", 1), Ok(MediaKind::Audio));
        assert_eq!(check("image/png", 0), Err(MediaError::Empty));
        assert_eq!(
            check("application/x-msdownload", 1),
            Err(MediaError::UnsupportedType(
                "application/x-msdownload".into()
            ))
        );
        for kind in ["image", "document", "audio", "video", "sticker"] {
            assert_eq!(MediaKind::parse(kind).map(MediaKind::name), Some(kind));
        }
    }

    #[test]
    fn media_ids_are_the_networks_characters() {
        assert!(valid_media_id("1037543291543636"));
        assert!(valid_media_id("media.sim.0a1b"));
        assert!(!valid_media_id(""));
        assert!(!valid_media_id("../etc/passwd"));
        assert!(!valid_media_id(&"9".repeat(129)));
    }
}
