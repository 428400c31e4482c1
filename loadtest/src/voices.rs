//! The simulated speakers' recordings: each speaker's Opus audio is encoded once, on every
//! core, before the speaker joins (see `moien_client::speech`), and kept for the process's
//! later runs and ramp steps. Encoding live would put libopus on the machine just when a burst
//! of participants joins and the server should have it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use moien_client::speech::{SpeechPattern, SpeechRecording};

type Voices = Mutex<HashMap<SpeechPattern, Arc<SpeechRecording>>>;

fn voices() -> &'static Voices {
    static VOICES: OnceLock<Voices> = OnceLock::new();
    VOICES.get_or_init(Default::default)
}

fn cached(p: &SpeechPattern) -> Option<Arc<SpeechRecording>> {
    voices().lock().ok()?.get(p).cloned()
}

fn encode(p: SpeechPattern) -> anyhow::Result<Arc<SpeechRecording>> {
    let r = Arc::new(SpeechRecording::encode(p).context("encoding a speaker's Opus audio")?);
    if let Ok(mut v) = voices().lock() {
        v.insert(p, r.clone());
    }
    Ok(r)
}

/// The recording of a speaker with this pattern: the prepared one, or encoded now.
pub fn voice(p: SpeechPattern) -> anyhow::Result<Arc<SpeechRecording>> {
    match cached(&p) {
        Some(r) => Ok(r),
        None => encode(p),
    }
}

/// Encodes the recordings not prepared yet, on as many threads as there are cores.
pub async fn prepare(patterns: impl IntoIterator<Item = SpeechPattern>) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let todo: Vec<SpeechPattern> = patterns
        .into_iter()
        .filter(|p| seen.insert(*p) && cached(p).is_none())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len());
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        while let Some(p) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                            encode(*p)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| anyhow::bail!("an encoder thread panicked"))
            })
        })
    })
    .await
    .context("encoding the speakers' audio")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use moien_client::speech::SpeechSource;

    #[tokio::test]
    async fn prepared_voices_are_shared_and_reproducible() {
        let patterns: Vec<SpeechPattern> = (9_000..9_006)
            .map(|seed| SpeechPattern {
                seed,
                ..Default::default()
            })
            .collect();
        prepare(patterns.clone()).await.unwrap();
        for p in &patterns {
            let a = voice(*p).unwrap();
            assert!(Arc::ptr_eq(&a, &voice(*p).unwrap()), "prepared once");
            let fresh = Arc::new(SpeechRecording::encode(*p).unwrap());
            assert_eq!(
                a.lengths(),
                fresh.lengths(),
                "the same audio as a fresh encoding"
            );
            let (mut x, mut y) = (SpeechSource::new(a), SpeechSource::new(fresh));
            assert!(
                (0..600).all(|_| x.next_frame() == y.next_frame()),
                "frame for frame"
            );
        }
    }
}
