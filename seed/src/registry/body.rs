//! Reading a registry's answer whole, within a bound: manifests and token answers are small, and
//! a registry (or a realm it names) must not make the seed hold more.

/// Why a body was not read.
pub(crate) enum BodyError {
    /// Longer than the bound (said by `Content-Length`, or found while reading).
    TooLarge,
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

/// The whole body of `resp`, if it is at most `max` bytes.
pub(crate) async fn read(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(e.without_url()))?
    {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
