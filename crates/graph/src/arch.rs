//! Declarative RepVGG architecture descriptions.
//!
//! An architecture is data, not code: the built-in variants are the TOML files in the
//! repository's `models/` directory, embedded at compile time, and a user can describe a
//! custom width/depth/groups variant in the same format and pass its path wherever an
//! architecture name is accepted.
//!
//! ```toml
//! name = "A0"
//! blocks_per_stage = [2, 4, 14, 1]
//! width_multipliers = [0.75, 0.75, 0.75, 2.5]   # or: widths = [48, 48, 96, 192, 1280]
//! groups = 1                                     # groups used on `grouped_layers`
//! grouped_layers = []                            # global layer indices, stage0 = 0
//! se = false                                     # squeeze-and-excitation in every block
//! num_classes = 1000
//! ```
//!
//! Widths follow Ding et al. (2021): stage0 = min(64, int(64a)), stages 1-4 =
//! int(64a), int(128a), int(256a), int(512b) for multipliers (a, a, a, b).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest architecture file read: real ones are a few hundred bytes.
pub const MAX_ARCH_FILE_BYTES: u64 = 1 << 20;

/// Upper bounds that keep a hostile architecture file from requesting absurd networks.
const MAX_WIDTH: usize = 1 << 16;
const MAX_BLOCKS_PER_STAGE: usize = 1024;
const MAX_CLASSES: usize = 1 << 20;
const MAX_GROUPS: usize = 1 << 12;

/// A RepVGG architecture as written in an architecture file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Short name, e.g. `A0` or `B1g4`.
    pub name: String,
    /// Number of blocks in stages 1..=4 (stage0 is always one block).
    pub blocks_per_stage: [usize; 4],
    /// Width multipliers (a, a, a, b) of the paper; exclusive with `widths`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width_multipliers: Option<[f64; 4]>,
    /// Explicit output widths of stage0..=stage4; exclusive with `width_multipliers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<[usize; 5]>,
    /// Group count applied to every layer listed in `grouped_layers`.
    #[serde(default = "one")]
    pub groups: usize,
    /// Global layer indices (stage0 = 0, stage1.0 = 1, ...) that use `groups` groups.
    #[serde(default)]
    pub grouped_layers: Vec<usize>,
    /// Squeeze-and-excitation in every block (RepVGG-D2se).
    #[serde(default)]
    pub se: bool,
    /// Classifier outputs.
    #[serde(default = "thousand")]
    pub num_classes: usize,
}

fn one() -> usize {
    1
}
fn thousand() -> usize {
    1000
}

/// The built-in variants, embedded from `models/`.
const BUILTIN: &[(&str, &str)] = &[
    ("A0", include_str!("../../../models/A0.toml")),
    ("A1", include_str!("../../../models/A1.toml")),
    ("A2", include_str!("../../../models/A2.toml")),
    ("B0", include_str!("../../../models/B0.toml")),
    ("B1", include_str!("../../../models/B1.toml")),
    ("B1g2", include_str!("../../../models/B1g2.toml")),
    ("B1g4", include_str!("../../../models/B1g4.toml")),
    ("B2", include_str!("../../../models/B2.toml")),
    ("B2g2", include_str!("../../../models/B2g2.toml")),
    ("B2g4", include_str!("../../../models/B2g4.toml")),
    ("B3", include_str!("../../../models/B3.toml")),
    ("B3g2", include_str!("../../../models/B3g2.toml")),
    ("B3g4", include_str!("../../../models/B3g4.toml")),
    ("D2se", include_str!("../../../models/D2se.toml")),
];

/// A TOML error as one line that says where: `line N, `key`: message`. toml's own display
/// quotes the source over several lines, and its bare message (`invalid length 1, expected
/// an array of length 4`) names neither the line nor the field; the span gives both.
fn toml_reason(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().lines().next().unwrap_or("parse error");
    // A span over the whole document (a missing field) says nothing about where.
    let Some(span) = error.span().filter(|s| s.start > 0 || s.end < text.len()) else { return message.to_string() };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    // A value's key is what precedes `=` on its line, when the span lies after the `=`
    // (an error at the key itself, such as an unknown field, names it already).
    let key = line_text
        .split_once('=')
        .filter(|(k, _)| start > line_start + k.len())
        .map(|(k, _)| k.trim().trim_matches(['"', '\'']))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    match key {
        Some(key) => format!("line {line}, `{key}`: {message}"),
        None => format!("line {line}: {message}"),
    }
}

impl ArchSpec {
    /// Names of all built-in variants, in the paper's order.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(name, _)| *name)
    }

    /// All built-in variants.
    pub fn builtins() -> impl Iterator<Item = ArchSpec> {
        BUILTIN.iter().map(|(name, text)| Self::from_toml(text, name).expect("built-in architecture files are valid"))
    }

    /// A built-in variant by name. Accepts `A0`, `a0`, `RepVGG-A0` and `repvgg_a0`.
    pub fn builtin(name: &str) -> Result<ArchSpec> {
        let lower = name.to_ascii_lowercase();
        let short = lower.strip_prefix("repvgg-").or_else(|| lower.strip_prefix("repvgg_")).unwrap_or(&lower);
        BUILTIN
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(short))
            .map(|(n, text)| Self::from_toml(text, n).expect("built-in architecture files are valid"))
            .ok_or_else(|| Error::UnknownArch {
                name: name.to_string(),
                known: Self::builtin_names().collect::<Vec<_>>().join(", "),
            })
    }

    /// A built-in name, or else a path to an architecture file.
    pub fn resolve(name_or_path: &str) -> Result<ArchSpec> {
        match Self::builtin(name_or_path) {
            Ok(spec) => Ok(spec),
            Err(unknown) => {
                let path = Path::new(name_or_path);
                if path.extension().is_some_and(|e| e == "toml") || path.exists() {
                    Self::from_file(path)
                } else {
                    Err(unknown)
                }
            }
        }
    }

    /// Reads and validates an architecture file.
    pub fn from_file(path: &Path) -> Result<ArchSpec> {
        let bytes = repvgg_files::read(path, "architecture file", MAX_ARCH_FILE_BYTES)?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes)
            .map_err(|e| Error::InvalidArch { origin: origin.clone(), reason: format!("not UTF-8 text ({e})") })?;
        Self::from_toml(&text, &origin)
    }

    /// Parses and validates architecture TOML; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<ArchSpec> {
        let spec: ArchSpec = toml::from_str(text)
            .map_err(|e| Error::InvalidArch { origin: origin.to_string(), reason: toml_reason(text, &e) })?;
        spec.validate().map_err(|reason| Error::InvalidArch { origin: origin.to_string(), reason })?;
        Ok(spec)
    }

    /// Serializes to the architecture file format.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("ArchSpec always serializes")
    }

    /// Output widths of stage0..=stage4.
    pub fn stage_widths(&self) -> [usize; 5] {
        if let Some(widths) = self.widths {
            return widths;
        }
        let m = self.width_multipliers.expect("validated: widths or width_multipliers");
        // `int()` of the official code truncates toward zero.
        let w = |base: f64, mult: f64| (base * mult) as usize;
        [64.min(w(64.0, m[0])), w(64.0, m[0]), w(128.0, m[1]), w(256.0, m[2]), w(512.0, m[3])]
    }

    /// Total number of conv layers (= blocks), stage0 included.
    pub fn num_layers(&self) -> usize {
        1 + self.blocks_per_stage.iter().sum::<usize>()
    }

    /// Groups of the layer with global index `layer`.
    pub fn groups_of(&self, layer: usize) -> usize {
        if self.grouped_layers.contains(&layer) { self.groups } else { 1 }
    }

    /// Checks every invariant a runnable network needs; returns the first violation.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        match (self.width_multipliers, self.widths) {
            (Some(_), Some(_)) => return Err("give either `widths` or `width_multipliers`, not both".into()),
            (None, None) => return Err("one of `widths` or `width_multipliers` is required".into()),
            (Some(m), None) => {
                if let Some(bad) = m.iter().find(|x| !x.is_finite() || **x <= 0.0 || **x > 64.0) {
                    return Err(format!("width multiplier {bad} is outside (0, 64]"));
                }
            }
            (None, Some(_)) => {}
        }
        for (b, &n) in self.blocks_per_stage.iter().enumerate() {
            if n == 0 || n > MAX_BLOCKS_PER_STAGE {
                return Err(format!("stage{} has {n} blocks; 1..={MAX_BLOCKS_PER_STAGE} allowed", b + 1));
            }
        }
        let widths = self.stage_widths();
        for (s, &w) in widths.iter().enumerate() {
            if w == 0 || w > MAX_WIDTH {
                return Err(format!("stage{s} width {w} is outside 1..={MAX_WIDTH}"));
            }
        }
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return Err(format!("num_classes {} is outside 1..={MAX_CLASSES}", self.num_classes));
        }
        if self.groups == 0 || self.groups > MAX_GROUPS {
            return Err(format!("groups {} is outside 1..={MAX_GROUPS}", self.groups));
        }
        let layers = self.num_layers();
        for &l in &self.grouped_layers {
            if l >= layers {
                return Err(format!("grouped layer {l} does not exist (the network has {layers} layers)"));
            }
        }
        // Group divisibility is checked per layer, where in/out widths are known.
        let mut in_ch: usize = 3;
        let mut layer = 0;
        for s in 0..5 {
            let blocks = if s == 0 { 1 } else { self.blocks_per_stage[s - 1] };
            for _ in 0..blocks {
                let g = self.groups_of(layer);
                if !in_ch.is_multiple_of(g) || !widths[s].is_multiple_of(g) {
                    return Err(format!(
                        "layer {layer}: {g} groups do not divide {in_ch} input / {} output channels",
                        widths[s]
                    ));
                }
                if self.se && widths[s] / 16 == 0 {
                    return Err(format!(
                        "layer {layer}: squeeze-and-excitation needs at least 16 channels, stage{s} has {}",
                        widths[s]
                    ));
                }
                in_ch = widths[s];
                layer += 1;
            }
        }
        Ok(())
    }

    /// True if `other` describes the same layer structure (ignoring name and class count).
    pub fn same_body(&self, other: &ArchSpec) -> bool {
        let groups = |a: &ArchSpec| (0..a.num_layers()).map(|l| a.groups_of(l)).collect::<Vec<_>>();
        self.blocks_per_stage == other.blocks_per_stage
            && self.stage_widths() == other.stage_widths()
            && self.se == other.se
            && groups(self) == groups(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_widths_follow_the_paper() {
        assert_eq!(ArchSpec::builtin("A0").unwrap().stage_widths(), [48, 48, 96, 192, 1280]);
        assert_eq!(ArchSpec::builtin("A2").unwrap().stage_widths(), [64, 96, 192, 384, 1408]);
        assert_eq!(ArchSpec::builtin("B1").unwrap().stage_widths(), [64, 128, 256, 512, 2048]);
        assert_eq!(ArchSpec::builtin("B3").unwrap().stage_widths(), [64, 192, 384, 768, 2560]);
        assert_eq!(ArchSpec::builtin("D2se").unwrap().blocks_per_stage, [8, 14, 24, 1]);
    }

    #[test]
    fn names_are_matched_loosely() {
        for name in ["A0", "a0", "RepVGG-A0", "repvgg_a0"] {
            assert_eq!(ArchSpec::builtin(name).unwrap().name, "A0");
        }
        assert_eq!(ArchSpec::builtin("b1G4").unwrap().groups, 4);
        let err = ArchSpec::resolve("Z9").unwrap_err().to_string();
        assert!(err.contains("unknown architecture `Z9`") && err.contains("B3g4"), "{err}");
    }

    #[test]
    fn all_fourteen_builtins_parse() {
        assert_eq!(ArchSpec::builtins().count(), 14);
    }

    #[test]
    fn invalid_files_are_refused_with_a_reason() {
        let cases = [
            ("name='x'\nblocks_per_stage=[1,1,1,1]", "one of `widths`"),
            (
                "name='x'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\nwidth_multipliers=[1.0,1.0,1.0,1.0]",
                "not both",
            ),
            ("name='x'\nblocks_per_stage=[0,1,1,1]\nwidths=[8,8,8,8,8]", "stage1 has 0 blocks"),
            (
                "name='x'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\ngroups=3\ngrouped_layers=[2]",
                "3 groups do not divide",
            ),
            ("name='x'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\ngrouped_layers=[9]", "does not exist"),
            ("name='x'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\nse=true", "at least 16 channels"),
            ("name='x'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\nbogus=1", "line 4: unknown field `bogus`"),
            // The field and the line, which toml's bare message names neither of.
            (
                "name='x'\nblocks_per_stage = [1]\nwidths=[8,8,8,8,8]",
                "line 2, `blocks_per_stage`: invalid length 1, expected an array of length 4",
            ),
            ("name='x'\n\nwidths=[8,8,8,8,8]\nse='yes'\nblocks_per_stage=[1,1,1,1]", "line 4, `se`: invalid type"),
            ("name='x'\nwidths=[8,8,8,8,8]", "missing field `blocks_per_stage`"),
            ("name='x'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\nse = tru\n", "line 4, `se`: "),
        ];
        for (text, needle) in cases {
            let err = ArchSpec::from_toml(text, "test").unwrap_err().to_string();
            assert!(err.contains(needle), "`{text}` gave `{err}`, wanted `{needle}`");
            assert!(!err.contains('\n'), "multi-line error: {err}");
        }
    }

    #[test]
    fn toml_round_trips() {
        for spec in ArchSpec::builtins() {
            assert_eq!(ArchSpec::from_toml(&spec.to_toml(), "rt").unwrap(), spec);
        }
    }
}
