//! The stdout protocol of `conveyor worker -- CMD`: which lines mean progress, result or a fatal
//! error. Pure, so it is tested here.

use crate::scheduler::Progress;

#[derive(Debug, PartialEq)]
pub enum Line {
    /// `PROGRESS <percent> [stage] [message...]`
    Progress(Progress),
    /// `RESULT <json>`: the last one becomes the job's result.
    Result(String),
    /// `FATAL <message>`: the failure is not worth retrying.
    Fatal(String),
    /// `ARTIFACT <path> [name]`: upload this file as an artifact when the command succeeds
    /// (named after the file when no name is given); files left in `CONVEYOR_OUTPUT_DIR` are
    /// uploaded without one.
    Artifact { path: String, name: String },
    /// Anything else: the command's own output, shown to the person running the worker.
    Other,
}

pub fn parse(line: &str) -> Line {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("PROGRESS ") {
        let mut parts = rest.trim_start().splitn(3, ' ');
        let Some(percent) = parts
            .next()
            .and_then(|p| p.trim_end_matches('%').parse::<f32>().ok())
        else {
            return Line::Other;
        };
        if percent.is_nan() {
            return Line::Other;
        }
        return Line::Progress(Progress {
            percent: percent.clamp(0.0, 100.0),
            stage: parts.next().unwrap_or_default().to_string(),
            message: parts.next().unwrap_or_default().trim().to_string(),
        });
    }
    if let Some(json) = line.strip_prefix("RESULT ") {
        return Line::Result(json.trim().to_string());
    }
    if let Some(message) = line.strip_prefix("FATAL ") {
        return Line::Fatal(message.trim().to_string());
    }
    if let Some(rest) = line.strip_prefix("ARTIFACT ") {
        let mut parts = rest.trim().splitn(2, ' ');
        let path = parts.next().unwrap_or_default().to_string();
        let name = match parts.next().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => path.rsplit('/').next().unwrap_or_default().to_string(),
        };
        if !path.is_empty() {
            return Line::Artifact { path, name };
        }
    }
    Line::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(percent: f32, stage: &str, message: &str) -> Line {
        Line::Progress(Progress {
            percent,
            stage: stage.into(),
            message: message.into(),
        })
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse("PROGRESS 45 encode frame 450/1000"),
            progress(45.0, "encode", "frame 450/1000")
        );
        assert_eq!(parse("PROGRESS 12.5%"), progress(12.5, "", ""));
        assert_eq!(parse("PROGRESS 7 upload"), progress(7.0, "upload", ""));
        assert_eq!(parse("PROGRESS 150 x"), progress(100.0, "x", ""), "clamped");
        assert_eq!(parse("PROGRESS lots"), Line::Other);
        assert_eq!(parse("PROGRESS NaN"), Line::Other);
        assert_eq!(parse("progress 5"), Line::Other);
    }

    #[test]
    fn result_and_fatal_lines() {
        assert_eq!(
            parse(r#"RESULT {"url":"s3://x"}"#),
            Line::Result(r#"{"url":"s3://x"}"#.into())
        );
        assert_eq!(
            parse("FATAL bad credentials\n"),
            Line::Fatal("bad credentials".into())
        );
        assert_eq!(parse("hello"), Line::Other);
    }

    #[test]
    fn artifact_lines() {
        let artifact = |path: &str, name: &str| Line::Artifact {
            path: path.into(),
            name: name.into(),
        };
        assert_eq!(
            parse("ARTIFACT /tmp/x/out.mp4"),
            artifact("/tmp/x/out.mp4", "out.mp4")
        );
        assert_eq!(
            parse("ARTIFACT /tmp/x/out.mp4 videos/final cut.mp4"),
            artifact("/tmp/x/out.mp4", "videos/final cut.mp4")
        );
        assert_eq!(parse("ARTIFACT "), Line::Other);
    }
}
