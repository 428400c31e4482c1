//! Sessions negotiated by someone else: the caller carries the SDP offer/answer over another
//! server's API (for example Janus's VideoRoom, which the load tester compares against), and the
//! client only moves and measures media, exactly as it does with Moien.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::SinkExt;
use moien_protocol::{ParticipantInfo, ServerMessage, SubscribedTrack};
use str0m::change::SdpAnswer;
use tokio::sync::{mpsc, watch};

use crate::{Client, ClientConfig, ClientError, ClientMessage, Driver, HttpKind, Report};

impl Client {
    /// Publishes with an offer/answer exchange the caller carries: `exchange` gets the client's
    /// offer (send-only audio and/or video, host candidates included, no trickle) and returns the
    /// remote answer.
    pub async fn publish_external<F, Fut>(
        config: ClientConfig,
        exchange: F,
    ) -> Result<Client, ClientError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<String, ClientError>>,
    {
        let (mut driver, report, changed) = new_driver(config).await?;
        let offer = match driver.publish_offer() {
            Some(ClientMessage::PublishOffer { sdp, .. }) => sdp,
            _ => return Err(ClientError::Protocol("nothing to publish".into())),
        };
        let answer = exchange(offer).await?;
        let answer = SdpAnswer::from_sdp_string(&answer)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        driver.accept_http_answer(&HttpKind::Whip, answer)?;
        Ok(spawn(driver, report, changed))
    }

    /// Receives from a remote offer the caller obtained; `tracks` says what each m-line carries.
    /// Returns the client and the answer the caller must deliver.
    pub async fn receive_external(
        mut config: ClientConfig,
        offer: String,
        tracks: Vec<SubscribedTrack>,
    ) -> Result<(Client, String), ClientError> {
        config.publish_audio = false;
        config.publish_video = false;
        let (mut driver, report, changed) = new_driver(config).await?;
        let mut out = Vec::new();
        driver.on_server(
            ServerMessage::SubscribeOffer { sdp: offer, tracks },
            &mut out,
        );
        let answer = out.into_iter().find_map(|m| match m {
            ClientMessage::SubscribeAnswer { sdp } => Some(sdp),
            _ => None,
        });
        let Some(answer) = answer else {
            return Err(ClientError::Protocol(
                "the remote offer was not accepted".into(),
            ));
        };
        Ok((spawn(driver, report, changed), answer))
    }
}

impl Client {
    /// Starts receiving on a running client (one made by `publish_external`): the remote offer
    /// the caller obtained, with what each m-line carries; returns the answer to deliver. One
    /// client then both publishes and receives, as one participant does.
    pub async fn receive_external_offer(
        &self,
        offer: String,
        tracks: Vec<SubscribedTrack>,
    ) -> Result<String, ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = ServerMessage::SubscribeOffer { sdp: offer, tracks };
        self.commands
            .send(crate::Command::ExternalOffer(msg, tx))
            .await
            .map_err(|_| ClientError::Protocol("the client has stopped".into()))?;
        rx.await
            .ok()
            .flatten()
            .ok_or_else(|| ClientError::Protocol("the remote offer was not accepted".into()))
    }
}

async fn new_driver(
    config: ClientConfig,
) -> Result<(Driver, Arc<Mutex<Report>>, watch::Receiver<u64>), ClientError> {
    let report = Arc::new(Mutex::new(Report {
        joined_at: Some(Instant::now()),
        ..Default::default()
    }));
    let (changed_tx, changed) = watch::channel(0u64);
    let driver = Driver::new(config, report.clone(), changed_tx).await?;
    Ok((driver, report, changed))
}

fn spawn(driver: Driver, report: Arc<Mutex<Report>>, changed: watch::Receiver<u64>) -> Client {
    let (commands, rx) = mpsc::channel(64);
    let sink = futures_util::sink::drain().sink_map_err(
        |e: std::convert::Infallible| -> tokio_tungstenite::tungstenite::Error { match e {} },
    );
    let task = tokio::spawn(driver.run(sink, futures_util::stream::pending(), rx));
    Client {
        report,
        changed,
        commands,
        task,
        participant: ParticipantInfo {
            metadata: String::new(),
            sid: String::new(),
            identity: String::new(),
            name: String::new(),
            tracks: Vec::new(),
        },
        cut: None,
    }
}
