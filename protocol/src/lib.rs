//! Wire formats spoken by the Ping An Tong alarm server: framing, parsing and
//! replies, with no I/O and no policy beyond what each protocol prescribes.

pub mod civil;
pub mod codec;
pub mod event;
pub mod eview;
pub mod gt06;
pub mod h02;
pub mod native;
pub mod sia_dc09;
pub mod watch;

pub use codec::{
    AuthStatus, ById, Codec, Fate, Frame, FramingError, Integrity, Judge, Judgement, Observation,
    ReplyPlan,
};
pub use event::{AlarmEvent, DeviceId, DeviceIdError, EventKind, Lane, Location};

/// An enum stored as its name in a text column (feature `sqlx`): encoded by
/// its `as_str`, decoded through its `parse`, so a name this version does not
/// know is an error where the row is read. `$what` names it in that error.
#[cfg(feature = "sqlx")]
#[macro_export]
macro_rules! stored_as_text {
    ($ty:ty, $what:literal) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let name = <&str as sqlx::Decode<DB>>::decode(value)?;
                <$ty>::parse(name).ok_or_else(|| format!("unknown {} {name:?}", $what).into())
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $ty
        where
            &'static str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut DB::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<DB>>::encode(self.as_str(), buf)
            }
        }
    };
}
