//! What a job's images cost: one home for the price its hold takes and for the balance
//! check that comes before any of its sources is read.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::job::{EditRequest, Reference, Size};
use crate::ledger::{hold_refusal, Amount, Ledger};
use crate::media::ImageKind;
use crate::GatewayError;

/// The size a job is priced at: an exact size as asked; `auto` on an edit or a compose at
/// its first source's size, read from the source's header (the reference backend keeps it,
/// and an edit model answers in its input's shape); otherwise `auto`, priced as the dearest
/// size it could become.
pub(crate) fn priced_size(size: Size, first_source: Option<&[u8]>) -> String {
    match (size, first_source.and_then(ImageKind::dimensions)) {
        (Size::Auto, Some((width, height))) => format!("{width}x{height}"),
        _ => size.to_string(),
    }
}

/// `n x price`, or `400` when no balance could hold it.
pub(crate) fn total(price: Amount, n: u32) -> Result<Amount, GatewayError> {
    price
        .times(n)
        .ok_or_else(|| GatewayError::invalid_request("n x price is beyond any balance", Some("n")))
}

/// Refuses a request its caller cannot pay before any source it names is read or fetched:
/// reading is the expensive part of a request before its hold (a stored upload, a URL), so
/// a caller without the money gets its `402` for the price of one balance read.
#[derive(Clone)]
pub(crate) struct Admission {
    ledger: Arc<dyn Ledger>,
    catalog: Catalog,
}

impl Admission {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, catalog: Catalog) -> Self {
        Admission { ledger, catalog }
    }

    /// `402` when the caller's available balance is below the least the request could
    /// cost (`n x` the cheapest price its `auto` values could resolve to); the hold, taken
    /// once the sources are read, charges the real price. A request that names nothing to
    /// read, or a free model, passes without a read.
    pub(crate) async fn check(&self, request: &EditRequest) -> Result<(), GatewayError> {
        let names_a_read = request
            .sources
            .iter()
            .chain(&request.mask)
            .any(|source| !matches!(source, Reference::Inline(_)));
        if !names_a_read {
            return Ok(());
        }
        let params = &request.params;
        let spec = self.catalog.get(&params.model)?;
        let (least, _) = spec.price_bounds(&params.size.to_string(), params.quality.as_str());
        let needed = total(Amount::new(least), params.n)?;
        if needed.get() == 0 {
            return Ok(());
        }
        let balance = self.ledger.balance(request.principal.user_id()).await?;
        hold_refusal(balance.available, needed)?;
        Ok(())
    }
}
