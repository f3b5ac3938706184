//! The three messaging channels of business-messaging ads and their identity fields.

use std::{fmt, str::FromStr};

use serde::{Serialize, Serializer};

/// A messaging channel, as Meta's `messaging_channel` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    WhatsApp,
    Messenger,
    Instagram,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::WhatsApp, Channel::Messenger, Channel::Instagram];

    /// The wire value of `messaging_channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WhatsApp => "whatsapp",
            Channel::Messenger => "messenger",
            Channel::Instagram => "instagram",
        }
    }

    /// The `user_data` key holding the business asset (WABA, Page, Instagram account).
    pub fn asset_field(self) -> &'static str {
        match self {
            Channel::WhatsApp => "whatsapp_business_account_id",
            Channel::Messenger => "page_id",
            Channel::Instagram => "instagram_business_account_id",
        }
    }

    /// The `user_data` key holding the click or customer identity within the channel.
    pub fn click_field(self) -> &'static str {
        match self {
            Channel::WhatsApp => "ctwa_clid",
            Channel::Messenger => "page_scoped_user_id",
            Channel::Instagram => "ig_sid",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "whatsapp" => Ok(Channel::WhatsApp),
            "messenger" => Ok(Channel::Messenger),
            "instagram" => Ok(Channel::Instagram),
            other => Err(format!(
                "unknown messaging channel {other:?}; expected whatsapp, messenger or instagram"
            )),
        }
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
