//! Event names: the 14 Meta accepts for business messaging, and what to do with web names.

/// The business-messaging event names from Meta's BM FAQ (spec §2.2).
pub const BUSINESS_MESSAGING_EVENTS: [&str; 14] = [
    "Purchase",
    "LeadSubmitted",
    "InitiateCheckout",
    "AddToCart",
    "ViewContent",
    "OrderCreated",
    "OrderShipped",
    "OrderDelivered",
    "OrderCanceled",
    "OrderReturned",
    "CartAbandoned",
    "QualifiedLead",
    "RatingProvided",
    "ReviewProvided",
];

/// Web (pixel) standard names that are not business-messaging names. `Lead` is handled apart
/// because it has an equivalent; the four shared names are in the list above.
const WEB_ONLY_EVENTS: [&str; 13] = [
    "AddPaymentInfo",
    "AddToWishlist",
    "CompleteRegistration",
    "Contact",
    "CustomizeProduct",
    "Donate",
    "FindLocation",
    "PageView",
    "Schedule",
    "Search",
    "StartTrial",
    "SubmitApplication",
    "Subscribe",
];

/// How a submitted name maps to the name sent to Meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventNameKind {
    /// One of the 14 names, spelled exactly.
    BusinessMessaging(&'static str),
    /// A name that means one of the 14 (`Lead`, or a different letter case).
    Equivalent {
        submitted: String,
        sent_as: &'static str,
    },
    /// A web standard name with no business-messaging equivalent.
    WebOnly(String),
    /// Any other name.
    Custom(String),
}

/// Classifies a submitted `event_name` (already trimmed and non-empty).
pub fn classify(name: &str) -> EventNameKind {
    if let Some(bm) = BUSINESS_MESSAGING_EVENTS.iter().find(|n| **n == name) {
        return EventNameKind::BusinessMessaging(bm);
    }
    if name.eq_ignore_ascii_case("Lead") {
        return EventNameKind::Equivalent {
            submitted: name.to_owned(),
            sent_as: "LeadSubmitted",
        };
    }
    if let Some(bm) = BUSINESS_MESSAGING_EVENTS
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))
    {
        return EventNameKind::Equivalent {
            submitted: name.to_owned(),
            sent_as: bm,
        };
    }
    if WEB_ONLY_EVENTS.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return EventNameKind::WebOnly(name.to_owned());
    }
    EventNameKind::Custom(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_business_messaging_name_is_kept_as_is() {
        for name in BUSINESS_MESSAGING_EVENTS {
            assert_eq!(classify(name), EventNameKind::BusinessMessaging(name));
        }
    }

    #[test]
    fn lead_is_sent_as_lead_submitted() {
        assert_eq!(
            classify("Lead"),
            EventNameKind::Equivalent {
                submitted: "Lead".into(),
                sent_as: "LeadSubmitted"
            }
        );
    }

    #[test]
    fn wrong_letter_case_maps_to_the_canonical_name() {
        assert_eq!(
            classify("purchase"),
            EventNameKind::Equivalent {
                submitted: "purchase".into(),
                sent_as: "Purchase"
            }
        );
    }

    #[test]
    fn web_names_without_equivalent_are_web_only() {
        for name in [
            "CompleteRegistration",
            "Subscribe",
            "StartTrial",
            "AddPaymentInfo",
        ] {
            assert_eq!(classify(name), EventNameKind::WebOnly(name.into()));
        }
    }

    #[test]
    fn other_names_are_custom() {
        assert_eq!(
            classify("DemoBooked"),
            EventNameKind::Custom("DemoBooked".into())
        );
    }
}
