//! Starting and stopping a whole server: services, the listeners (client, federation, and
//! metrics when configured), and graceful shutdown that
//! lets in-flight requests finish (bounded by `http.shutdown_grace_period_secs`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt;
use myelin_api::AppState;
use myelin_service::{Config, Services};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// A server that is running. Dropping it does not stop it; call [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    pub client_addr: SocketAddr,
    pub federation_addr: SocketAddr,
    /// The metrics listener's address, when `listen.metrics` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub services: Arc<Services>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Asks the server to stop and waits until it has: listeners closed, in-flight requests done
    /// (or the grace period over), database closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("server task panicked")?
    }

    /// Waits for the server to stop on its own (after [`RunningServer::stop_handle`] fires).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// A handle that stops the server when sent `true`.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Every accepted connection sends without Nagle's delay: a response written in more than one
/// piece (headers, then a body larger than a segment) would otherwise wait for the client's
/// delayed acknowledgement, about 40 ms on Linux, before its last piece goes out.
pub(crate) fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY on an accepted connection");
    }
}

/// Binds both listeners, starts the services and serves until stopped.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    // Both listeners are bound before anything is written, so a port in use fails fast.
    let client_tcp = TcpListener::bind(config.listen.client)
        .await
        .with_context(|| format!("cannot listen on listen.client = {}", config.listen.client))?;
    let federation_tcp = TcpListener::bind(config.listen.federation)
        .await
        .with_context(|| {
            format!(
                "cannot listen on listen.federation = {}",
                config.listen.federation
            )
        })?;
    let metrics_tcp = match config.listen.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on listen.metrics = {addr}"))?,
        ),
        None => None,
    };
    let client_addr = client_tcp.local_addr()?;
    let federation_addr = federation_tcp.local_addr()?;
    let metrics_addr = metrics_tcp.as_ref().map(|t| t.local_addr()).transpose()?;

    let services = Services::start(config).await?;
    let (cert, key) = crate::tls::certificate_paths(&services.config)?;
    let tls = crate::tls::server_config(&cert, &key)?;
    let federation_listener = crate::tls::TlsListener::new(federation_tcp, tls)?;

    let state = AppState::new(services.clone());
    let client_app = myelin_api::client_router(state.clone());
    let metrics_app = myelin_api::metrics_router(state.clone());
    let federation_app = myelin_api::federation_router(state);
    let grace = Duration::from_secs(services.config.http.shutdown_grace_period_secs);

    let (stop, stopped) = watch::channel(false);
    let wait_for_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let client = axum::serve(
        client_tcp.tap_io(no_delay),
        client_app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(wait_for_stop(stopped.clone()));
    let federation = axum::serve(federation_listener, federation_app.into_make_service())
        .with_graceful_shutdown(wait_for_stop(stopped.clone()));
    let metrics = metrics_tcp.map(|tcp| {
        axum::serve(
            tcp.tap_io(no_delay),
            metrics_app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(wait_for_stop(stopped.clone()))
    });

    // Once nothing can fail any more: the shutdown below stops it.
    services.start_background();
    tracing::info!(%client_addr, %federation_addr, ?metrics_addr, "listening");
    let task_services = services.clone();
    let task = tokio::spawn(async move {
        let serving = async {
            let metrics = async {
                match metrics {
                    Some(metrics) => metrics.into_future().await,
                    None => Ok(()),
                }
            };
            let (client, federation, metrics) =
                tokio::join!(client.into_future(), federation.into_future(), metrics);
            client.context("client listener")?;
            federation.context("federation listener")?;
            metrics.context("metrics listener")?;
            anyhow::Ok(())
        };
        tokio::pin!(serving);
        let stopped_rx = stopped;
        tokio::select! {
            result = &mut serving => result?,
            () = wait_for_stop(stopped_rx.clone()) => {
                tracing::info!(grace_secs = grace.as_secs(), "shutting down: finishing in-flight requests");
                if tokio::time::timeout(grace, &mut serving).await.is_err() {
                    tracing::warn!("grace period over; dropping the requests still running");
                }
            }
        }
        task_services.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    });

    Ok(RunningServer {
        client_addr,
        federation_addr,
        metrics_addr,
        services,
        stop,
        task,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap(), "Nagle is on by default");
        super::no_delay(&mut accepted);
        assert!(accepted.nodelay().unwrap());
    }
}
