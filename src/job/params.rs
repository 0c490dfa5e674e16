//! The typed values of an edit request and the parsers that produce them.

use std::fmt;
use std::str::FromStr;

use crate::GatewayError;

/// The longest prompt, in characters, the spec allows.
pub const MAX_PROMPT_CHARS: usize = 32_000;

/// The most partial images a streamed job may ask for (OpenAI's `partial_images` 0-3).
pub const MAX_PARTIAL_IMAGES: u8 = 3;

/// The output dimensions: `auto` (the source's own) or an exact `WIDTHxHEIGHT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Size {
    /// Let the backend choose; the reference backend keeps the source's dimensions.
    #[default]
    Auto,
    /// Exact pixel dimensions, both at least 1.
    Exact {
        /// Pixels across.
        width: u32,
        /// Pixels down.
        height: u32,
    },
}

impl FromStr for Size {
    type Err = GatewayError;

    /// `auto` or `WIDTHxHEIGHT`, at most 16 characters, both numbers at least 1. Whether a
    /// model supports the size is the backend's call (an unsupported size is refunded).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            GatewayError::invalid_request(
                "size must be `auto` or WIDTHxHEIGHT (at most 16 characters), e.g. 1024x1024",
                Some("size"),
            )
        };
        if s.len() > 16 {
            return Err(bad());
        }
        if s == "auto" {
            return Ok(Size::Auto);
        }
        let (w, h) = s.split_once('x').ok_or_else(bad)?;
        let number = |t: &str| {
            let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| t.parse::<u32>().ok())
                .flatten()
                .filter(|&v| v > 0)
        };
        match (number(w), number(h)) {
            (Some(width), Some(height)) => Ok(Size::Exact { width, height }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Auto => f.write_str("auto"),
            Size::Exact { width, height } => write!(f, "{width}x{height}"),
        }
    }
}

/// Declares a closed set of lowercase words that a field accepts.
macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident, $param:literal,
     { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The word as the API spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }
        }

        impl FromStr for $name {
            type Err = GatewayError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(GatewayError::invalid_request(
                        concat!($param, " must be one of: ", $($word, " "),+).trim_end(),
                        Some($param),
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The longest quality word accepted.
const MAX_QUALITY_CHARS: usize = 16;

/// Rendering quality: an open word, as models add values (`auto`, `low`, `medium`, `high`
/// today; `standard`, `hd` for older ones). Checked here for shape (1 to 16 of `a-z`, `0-9`,
/// `_`, `-`) and by the [`Catalog`](crate::catalog::Catalog) against the model's list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quality(String);

impl Quality {
    /// `auto`: the backend chooses.
    pub fn auto() -> Self {
        Quality("auto".to_owned())
    }

    /// The word as the API spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Quality {
    fn default() -> Self {
        Quality::auto()
    }
}

impl FromStr for Quality {
    type Err = GatewayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
        if s.is_empty() || s.len() > MAX_QUALITY_CHARS || !s.bytes().all(word) {
            return Err(GatewayError::invalid_request(
                "quality must be a lowercase word such as auto, low, medium or high",
                Some("quality"),
            ));
        }
        Ok(Quality(s.to_owned()))
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

word_enum!(
    /// Background handling.
    Background, "background", {
        #[default]
        /// The backend chooses.
        Auto = "auto",
        /// Keep or produce an alpha channel (PNG and WebP only).
        Transparent = "transparent",
        /// Drop any alpha channel.
        Opaque = "opaque",
    }
);

word_enum!(
    /// The encoding of the returned images.
    OutputFormat, "output_format", {
        #[default]
        /// PNG.
        Png = "png",
        /// JPEG.
        Jpeg = "jpeg",
        /// WebP.
        Webp = "webp",
    }
);

word_enum!(
    /// What the client asked the images to be returned as. Always answered as `b64_json`:
    /// the gateway exposes no URLs, and accepting `url` keeps clients that send it working.
    ResponseFormat, "response_format", {
        #[default]
        /// Base64 in the JSON body.
        B64Json = "b64_json",
        /// Accepted and answered as `b64_json`.
        Url = "url",
    }
);

word_enum!(
    /// Tokensmart's `aspect_ratio` of a generation: the output's shape when no exact size
    /// is given.
    AspectRatio, "aspect_ratio", {
        #[default]
        /// Square.
        Square = "1:1",
        /// Widescreen landscape.
        Wide = "16:9",
        /// Widescreen portrait.
        Tall = "9:16",
        /// Classic landscape.
        Landscape = "4:3",
        /// Classic portrait.
        Portrait = "3:4",
        /// Photo landscape.
        PhotoLandscape = "3:2",
        /// Photo portrait.
        PhotoPortrait = "2:3",
    }
);

impl AspectRatio {
    /// The ratio as (width, height) terms.
    fn terms(self) -> (u32, u32) {
        match self {
            AspectRatio::Square => (1, 1),
            AspectRatio::Wide => (16, 9),
            AspectRatio::Tall => (9, 16),
            AspectRatio::Landscape => (4, 3),
            AspectRatio::Portrait => (3, 4),
            AspectRatio::PhotoLandscape => (3, 2),
            AspectRatio::PhotoPortrait => (2, 3),
        }
    }

    /// The size a generation of this shape is asked at when the client gave `size: auto`
    /// or none: about a megapixel, sides multiples of 16 (the models' native sizes where
    /// they have one: 1024x1024, 1536x1024, 1024x1536).
    pub fn size(self) -> Size {
        let (width, height) = match self {
            AspectRatio::Square => (1024, 1024),
            AspectRatio::Wide => (1792, 1008),
            AspectRatio::Tall => (1008, 1792),
            AspectRatio::Landscape => (1536, 1152),
            AspectRatio::Portrait => (1152, 1536),
            AspectRatio::PhotoLandscape => (1536, 1024),
            AspectRatio::PhotoPortrait => (1024, 1536),
        };
        Size::Exact { width, height }
    }

    /// Whether `size` has this shape exactly (`auto` takes any shape).
    pub fn fits(self, size: Size) -> bool {
        let (a, b) = self.terms();
        match size {
            Size::Auto => true,
            Size::Exact { width, height } => {
                u64::from(width) * u64::from(b) == u64::from(height) * u64::from(a)
            }
        }
    }
}

impl OutputFormat {
    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }

    /// The MIME type of the encoding.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    /// The encoding `bytes` show; `None` for a GIF or anything else not an output.
    pub fn of(bytes: &[u8]) -> Option<OutputFormat> {
        match crate::media::ImageKind::sniff(bytes)? {
            crate::media::ImageKind::Png => Some(OutputFormat::Png),
            crate::media::ImageKind::Jpeg => Some(OutputFormat::Jpeg),
            crate::media::ImageKind::Webp => Some(OutputFormat::Webp),
            crate::media::ImageKind::Gif => None,
        }
    }
}

/// Checks that a prompt is not empty (after trimming) and at most 32,000 characters.
pub fn parse_prompt(prompt: String) -> Result<String, GatewayError> {
    if prompt.trim().is_empty() {
        return Err(GatewayError::invalid_request(
            "prompt must not be empty",
            Some("prompt"),
        ));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(GatewayError::invalid_request(
            format!("prompt must be at most {MAX_PROMPT_CHARS} characters"),
            Some("prompt"),
        ));
    }
    Ok(prompt)
}

/// Parses a whole number field from its text form and checks it is within `range`.
pub(crate) fn parse_integer(
    text: &str,
    param: &'static str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, GatewayError> {
    let bad = || {
        GatewayError::invalid_request(
            format!(
                "{param} must be an integer from {} to {}",
                range.start(),
                range.end()
            ),
            Some(param),
        )
    };
    let text = text.trim();
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u32>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(bad)
}

/// Parses a boolean field sent as text (`true` / `false`, as multipart forms carry it).
pub(crate) fn parse_flag(text: &str, param: &'static str) -> Result<bool, GatewayError> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(GatewayError::invalid_request(
            format!("{param} must be true or false"),
            Some(param),
        )),
    }
}

/// Checks a passed-through word (`moderation`, `input_fidelity`, `user`): 1 to `max`
/// visible ASCII characters, so what reaches the model or a log is never a control
/// sequence or a megabyte. Its values are the model's to judge.
pub(crate) fn parse_token(
    text: String,
    param: &'static str,
    max: usize,
) -> Result<String, GatewayError> {
    if text.is_empty() || text.len() > max || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GatewayError::invalid_request(
            format!("{param} must be 1 to {max} visible ASCII characters"),
            Some(param),
        ));
    }
    Ok(text)
}

/// Parses `n` from its text form and checks `1..=max`.
pub fn parse_n(text: &str, max: u32) -> Result<u32, GatewayError> {
    let bad = || {
        GatewayError::invalid_request(
            format!("n must be an integer from 1 to {max} for this model"),
            Some("n"),
        )
    };
    let text = text.trim();
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("auto".parse::<Size>().unwrap(), Size::Auto);
        assert_eq!(
            "1024x768".parse::<Size>().unwrap(),
            Size::Exact {
                width: 1024,
                height: 768
            }
        );
        for bad in [
            "",
            "0x5",
            "5x0",
            "x5",
            "5x",
            "1024X768",
            "-1x5",
            "+1x5",
            "1x1x1",
            "12345678x12345678",
            "99999999999x1",
            " 1x1",
            "auto ",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn words() {
        assert_eq!("high".parse::<Quality>().unwrap().as_str(), "high");
        assert_eq!("hd".parse::<Quality>().unwrap().to_string(), "hd");
        assert_eq!("webp".parse::<OutputFormat>().unwrap(), OutputFormat::Webp);
        let err = "HIGH".parse::<Quality>().unwrap_err();
        assert_eq!(err.param(), Some("quality"));
        assert!(err.to_string().starts_with("quality must be"), "{err}");
        assert!("x".repeat(17).parse::<Quality>().is_err());
        assert!("hi gh".parse::<Quality>().is_err());
        assert_eq!(OutputFormat::default(), OutputFormat::Png);
    }

    #[test]
    fn aspect_ratios_have_their_shape() {
        for word in ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"] {
            let ratio: AspectRatio = word.parse().unwrap();
            assert!(ratio.fits(ratio.size()), "{word}");
            assert_eq!(ratio.as_str(), word);
        }
        assert!(!AspectRatio::Wide.fits("1024x1024".parse().unwrap()));
        assert!(AspectRatio::Wide.fits(Size::Auto));
        assert_eq!(
            "5:4".parse::<AspectRatio>().unwrap_err().param(),
            Some("aspect_ratio")
        );
    }

    #[test]
    fn passed_through_words_and_numbers() {
        assert_eq!(
            parse_integer("100", "output_compression", 0..=100).unwrap(),
            100
        );
        assert!(parse_integer("101", "output_compression", 0..=100).is_err());
        assert!(parse_flag("yes", "stream").is_err());
        assert!(parse_flag("true", "stream").unwrap());
        assert!(parse_token("low".into(), "moderation", 32).is_ok());
        for bad in ["", "a b", "\u{1b}[31m", &"x".repeat(33)] {
            assert!(
                parse_token(bad.into(), "moderation", 32).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn n_bounds() {
        assert_eq!(parse_n("1", 4).unwrap(), 1);
        assert_eq!(parse_n(" 4 ", 4).unwrap(), 4);
        for bad in ["0", "5", "-1", "1.0", "", "abc", "99999999999999"] {
            assert!(parse_n(bad, 4).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prompts() {
        assert!(parse_prompt("   ".into()).is_err());
        assert!(parse_prompt("é".repeat(MAX_PROMPT_CHARS)).is_ok());
        assert!(parse_prompt("a".repeat(MAX_PROMPT_CHARS + 1)).is_err());
    }
}
